"""Option values are checked before any work: a bad value exits with status 2 and one sentence that
names the option (argparse's ``modinv CMD: error: argument --OPTION: ...``), before a model is
loaded or an output folder is made. Stage names, which need the model, are checked right after it
is loaded and before anything else. The checks are the ``type=`` functions of
:mod:`modinv.cli.common`, which every command can reuse.
"""

from __future__ import annotations

import argparse

import pytest
import torch

import modinv.cli.common as cli_common
from modinv.cli import main
from modinv.errors import ModinvError

VIT = ["--model", "vit-b16", "--weights", "random", "--device", "cpu", "--input-size", "32", "32"]


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model is the first piece of work of every command: it must not happen."""

    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded although an option was bad")

    monkeypatch.setattr(cli_common, "load_model", load_model)


def refused(argv: list[str], capsys) -> str:
    """Run the CLI, check that argparse stops it with status 2 and one error line without a
    traceback; return the part after ``argument ``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    prog = " ".join(["modinv", *argv[:2]]) if argv[0] == "analyze" else f"modinv {argv[0]}"
    prefix = f"{prog}: error: argument "
    assert last.startswith(prefix), err
    return last[len(prefix):]


def _evaluate(tmp_path, *extra):
    return ["evaluate", *VIT, "--inverse", str(tmp_path / "chain"), "--data", "samples",
            "--out", str(tmp_path / "out" / "e.json"), *extra]


def _eval_task(tmp_path, *extra):
    return ["eval-task", *VIT, "--data", "imagenet:/data", "--out", str(tmp_path / "out" / "t.json"), *extra]


def _analyze(name, tmp_path, *extra):
    return ["analyze", name, *VIT, "--inverse", str(tmp_path / "chain"), "--data", "samples",
            "--out", str(tmp_path / "out"), *extra]


CASES = [  # (command line builder, extra options, expected message after "argument ")
    (_evaluate, ["--batch", "-1"], "--batch: must be a positive whole number, got -1"),
    (_evaluate, ["--batch", "two"], "--batch: expected a positive whole number, got 'two'"),
    (_eval_task, ["--batch", "0"], "--batch: must be a positive whole number, got 0"),
    (_eval_task, ["--limit", "-2"], "--limit: must be a positive whole number, got -2"),
    (_eval_task, ["--score-threshold", "1"], "--score-threshold: must be a number in [0, 1), got 1"),
    (_eval_task, ["--score-threshold", "nan"], "--score-threshold: must be a number in [0, 1), got nan"),
    (lambda t, *e: _analyze("stages", t, *e), ["--batch", "0"], "--batch: must be a positive whole number, got 0"),
    (lambda t, *e: _analyze("stages", t, *e), ["--limit", "0"], "--limit: must be a positive whole number, got 0"),
    (lambda t, *e: _analyze("tokens", t, *e), ["--fraction", "0"], "--fraction: must be a number in (0, 1], got 0"),
    (lambda t, *e: _analyze("tokens", t, *e), ["--fraction", "nan"], "--fraction: must be a number in (0, 1], got nan"),
    (lambda t, *e: _analyze("tokens", t, *e), ["--figure-images", "-1"],
     "--figure-images: must be a positive whole number, got -1"),
    (lambda t, *e: _analyze("tokens", t, *e), ["--token-seed", "-1"],
     "--token-seed: must be a whole number, 0 or more, got -1"),
    (lambda t, *e: _analyze("layers", t, *e), ["--figure-images", "0"],
     "--figure-images: must be a positive whole number, got 0"),
    (lambda t, *e: _analyze("errors", t, *e), ["--threshold", "1.5"], "--threshold: must be a number in [0, 1), got 1.5"),
    (lambda t, *e: _analyze("errors", t, *e), ["--iou", "0"], "--iou: must be a number in (0, 1], got 0"),
    (lambda t, *e: _analyze("structure", t, *e), ["--examples", "0"], "--examples: must be a positive whole number, got 0"),
    (lambda t, *e: _analyze("structure", t, *e), ["--box-threshold", "inf"],
     "--box-threshold: must be a number in [0, 1), got inf"),
    (lambda t, *e: _analyze("color", t, *e), ["--examples", "-1"], "--examples: must be a whole number, 0 or more, got -1"),
    (lambda t, *e: _analyze("color", t, *e), ["--min-area", "1"], "--min-area: must be a number in [0, 1), got 1"),
    (lambda t, *e: ["info", *VIT, *e], ["--seed", "-1"], "--seed: must be a whole number, 0 or more, got -1"),
    (lambda t, *e: ["finetune", *VIT, "--data", "samples", "--out", str(t / "out"), *e], ["--lam", "2"],
     "--lam: must be a number in [0, 1], got 2"),
    (lambda t, *e: ["finetune", *VIT, "--lam", "1", "--data", "samples", "--out", str(t / "out"), *e],
     ["--theta-lr", "0"], "--theta-lr: must be a positive number, got 0"),
    (lambda t, *e: ["efficiency", *VIT, "--out", str(t / "out"), *e], ["--steps", "0"],
     "--steps: must be a positive whole number, got 0"),
    (lambda t, *e: ["demo", "--out", str(t / "out"), *e], ["--input-size", "0", "32"],
     "--input-size: must be a positive number of pixels, got 0"),
    (lambda t, *e: ["info", *VIT, *e], ["--input-size", "-5", "32"],
     "--input-size: must be a positive number of pixels, got -5"),
    (lambda t, *e: ["params", *VIT, *e], ["--input-size", "32", "5000"],
     f"--input-size: must be at most {cli_common.MAX_INPUT_SIDE} pixels, got 5000"),
]


@pytest.mark.parametrize("build,extra,expected", CASES, ids=[" ".join(c[1]) + f" [{i}]" for i, c in enumerate(CASES)])
def test_bad_option_values_stop_before_any_work(build, extra, expected, tmp_path, capsys, no_work):
    assert refused(build(tmp_path, *extra), capsys) == expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,expected", [(["--limit", "0"], "--limit: must be a positive whole number, got 0"),
                                            (["--batch", "0"], "--batch: must be a positive whole number, got 0")])
def test_evaluate_counts_must_be_positive(extra, expected, tmp_path, capsys, no_work):
    assert refused(_evaluate(tmp_path, *extra), capsys) == expected


def test_input_size_zero_names_the_option(capsys, no_work):
    """0×0 used to reach the model (a traceback for some: mobilenet-v2 at -5×32 crashed in torch.zeros)."""
    for size in (["0", "0"], ["-5", "32"]):
        message = refused(["info", "--model", "mobilenet-v2", "--weights", "random", "--input-size", *size], capsys)
        assert message.startswith("--input-size: must be a positive number of pixels")


def test_stage_names_of_variant_are_checked_against_the_model(capsys, model_cache):
    capsys.readouterr()
    assert main(["info", *VIT, "--variant", "nosuch=local"]) == 2
    assert capsys.readouterr().err.strip() == (
        "modinv info: error: --variant names 'nosuch', which is not a stage of 'vit-b16'; its stages are bb, enc")
    assert main(["params", *VIT, "--variant", "bb"]) == 2
    assert capsys.readouterr().err.strip() == "modinv params: error: --variant: expected STAGE=VARIANT, got 'bb'"


def test_a_cuda_device_that_does_not_exist(monkeypatch, capsys, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    capsys.readouterr()
    assert main(["info", *VIT[:4], "--device", "cuda:3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "modinv info: error: --device cuda:3 does not exist: this machine has 1 CUDA device(s), cuda:0 onwards")


# -- the checks themselves, for every command to reuse ------------------------------------------------------

def _bad(check, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        check(text)
    return str(info.value)


def test_count_checks():
    assert cli_common.positive_int("3") == 3 and cli_common.non_negative_int("0") == 0
    assert _bad(cli_common.positive_int, "0") == "must be a positive whole number, got 0"
    assert _bad(cli_common.positive_int, "1.5") == "expected a positive whole number, got '1.5'"
    assert _bad(cli_common.non_negative_int, "-1") == "must be a whole number, 0 or more, got -1"
    assert cli_common.image_side("4096") == 4096
    assert _bad(cli_common.image_side, "0") == "must be a positive number of pixels, got 0"


def test_number_checks():
    assert cli_common.positive_float("1e-3") == 1e-3
    for text in ("0", "-1", "nan", "inf"):
        assert _bad(cli_common.positive_float, text) == f"must be a positive number, got {text}"
    assert _bad(cli_common.positive_float, "fast") == "expected a number, got 'fast'"
    half_open = cli_common.number_in(0, 1, high_open=True)
    assert half_open("0") == 0.0 and half_open("0.999") == 0.999
    assert _bad(half_open, "1") == "must be a number in [0, 1), got 1"
    assert _bad(cli_common.number_in(0, 1, low_open=True), "0") == "must be a number in (0, 1], got 0"


def test_assignments_name_their_option_and_check_their_values():
    """What ``train --lr s4=-1`` needs: the value checked by a ``type=`` function, the option named."""
    rates = cli_common.parse_assignments(["bb=1e-3"], kind=cli_common.positive_float, what="learning rate",
                                         option="--lr")
    assert rates == {"bb": 1e-3}
    with pytest.raises(ModinvError) as info:
        cli_common.parse_assignments(["s4=-1"], kind=cli_common.positive_float, what="learning rate", option="--lr")
    assert str(info.value) == "--lr: bad learning rate in 's4=-1' (must be a positive number, got -1)"
    with pytest.raises(ModinvError, match=r"^expected STAGE=VALUE, got 'x'$"):
        cli_common.parse_assignments(["x"])  # without an option: the message as before


# -- issue 27: integers out of range, devices the build lacks, inputs too large --------------------------

@pytest.mark.parametrize("command", ["info", "train", "demo"])
@pytest.mark.parametrize("seed", ["9223372036854775807", "18446744073709551616", "4294967296"])
def test_seeds_out_of_range_are_refused_naming_the_option(command, seed, tmp_path, capsys, no_work):
    argv = {"info": ["info", "--model", "mobilenet-v2", "--weights", "random"],
            "train": ["train", *VIT, "--data", "samples", "--out", str(tmp_path / "run")],
            "demo": ["demo", "--out", str(tmp_path / "demo")]}[command]
    message = refused([*argv, "--seed", seed], capsys)
    assert message == f"--seed: must be a whole number from 0 to 4294967295, got {seed}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def _fails(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("device, words", [("tpu", "unknown device 'tpu'"),
                                           ("mps", "device 'mps' is not available in this build of torch"),
                                           ("meta", "device 'meta' is not available in this build of torch")])
def test_devices_the_build_lacks(device, words, capsys):
    message = _fails(["info", "--model", "mobilenet-v2", "--weights", "random", "--device", device], capsys)
    assert message == f"modinv info: error: {words}" + ("; use cpu, cuda or cuda:N" if device == "tpu" else
                                                        "; use cpu or cuda")


@pytest.mark.parametrize("command", ["info", "train"])
def test_an_input_size_too_large_to_run_is_refused_at_once(command, tmp_path, capsys):
    """Was: `info --input-size 4096 4096` on ViT ran past 5 minutes."""
    argv = ["info"] if command == "info" else ["train", "--data", "samples", "--steps", "1", "--out", str(tmp_path / "run")]
    message = _fails([*argv, "--model", "vit-b16", "--weights", "random", "--device", "cpu",
                      "--input-size", "4096", "4096"], capsys)
    assert "input size 4096×4096 is 16,777,216 pixels, above the 4,194,304 (2048×2048)" in message
