"""The command line explains itself: every option of every (sub)command has help, the words for
the same thing are the same everywhere (``--arch``), and ``modinv --version`` answers."""

from __future__ import annotations

import argparse

import pytest

import modinv
from modinv.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_of_every_command_has_help():
    missing = [f"modinv {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
               for path, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and action.help in (None, "")]
    assert not missing, missing


def test_arch_is_one_option_with_one_default_and_one_help():
    archs = {path: next(a for a in parser._actions if "--arch" in a.option_strings)
             for path, parser in _parsers(build_parser())
             if any("--arch" in a.option_strings for a in parser._actions)}
    assert {("train",), ("demo",), ("params",), ("efficiency",), ("info",)} <= set(archs)
    assert len({a.help for a in archs.values()}) == 1 and len({a.choices for a in archs.values()}) == 1
    resumable = {("train",), ("finetune",)}  # default None: the resumed run's, else "default"
    assert {a.default for path, a in archs.items() if path not in resumable} == {"default"}
    assert "deit-b16" in archs[("train",)].help and "swin-b" in archs[("train",)].help


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"modinv {modinv.__version__}"


def test_reconstruct_amp_help_says_what_it_changes():
    reconstruct = dict(_parsers(build_parser()))[("reconstruct",)]
    amp = next(a for a in reconstruct._actions if "--amp" in a.option_strings)
    assert "reported numbers" not in amp.help and "reconstruction" in amp.help


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_hf_folder_that_does_not_exist_is_named(tmp_path, capsys, network_attempts):
    missing = tmp_path / "no" / "such"
    message = _error(["info", "--model", f"hf:{missing}", "--weights", "random"], capsys)
    assert message == (f"modinv info: error: hf:{missing}: the folder {str(missing)!r} does not exist (a hub id has "
                       "the form owner/name)")
    assert network_attempts == []


def test_errors_speak_in_option_words_not_python(capsys):
    message = _error(["info", "--model", "vit-b16", "--weights", "random", "--input-size", "32", "32",
                      "--variant", "bb=local"], capsys)
    assert "variants=" not in message and "{" not in message and "bb variant standard or analytic" in message
    message = _error(["info", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
                      "--arch", "auto", "--variant", "s4=local"], capsys)
    assert "arch=" not in message and "s4=local" in message


def test_the_papers_short_names_are_spelled_out_in_the_help():
    parsers = dict(_parsers(build_parser()))
    analyze = next(a for a in parsers[("analyze",)]._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in analyze._choices_actions}
    assert "full class distribution" in helps["structure"] and "one-hot" in helps["structure"]
    assert all(name in helps["tokens"] for name in ("bb_man", "enc_man", "enc_man+"))
    variant = next(a for a in parsers[("train",)]._actions if "--variant" in a.option_strings)
    assert "one-hot" in variant.help and "full class distribution" in variant.help
