"""SIGTERM (what Slurm and Kubernetes send before killing a job) ends `modinv train` like Ctrl-C:
the step in progress finishes, a final checkpoint is written, the lock is released, and the
command exits 143 with one line; a resume continues from that checkpoint. Before, the process died
at once with no message and no checkpoint of its last steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modinv.training import checkpoint as ckpt
from modinv.training.run_folder import LOCK_FILE

TIMEOUT_S = 240
COMMAND = [
    sys.executable, "-m", "modinv", "train", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu",
    "--input-size", "32", "32", "--arch", "auto", "--data", "samples", "--batch", "2", "--no-progress",
    "--amp", "off", "--log-every", "1", "--checkpoint-every", "100000",
]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)


def _steps_logged(out: Path) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.endswith("}") and '"loss"' in line)


def test_sigterm_writes_a_final_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*COMMAND, "--steps", "100000", "--out", str(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _steps_logged(out) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    lines = [line for line in err.strip().splitlines() if line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("modinv train: terminated (SIGTERM): training stopped after step ")
    assert "continue with --resume" in lines[0]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stopped = records[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "terminated"
    folder = ckpt.latest(out / "checkpoints")
    assert folder is not None and folder.name == f"ckpt-{stopped['step']:08d}"  # the final checkpoint
    assert not (out / LOCK_FILE).exists() and (out / "best" / "manifest.json").is_file()
    resumed = subprocess.run([*COMMAND, "--steps", str(stopped["step"] + 1), "--out", str(out), "--resume"],
                             env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resumed" and e.get("from") == folder.name for e in events)


def test_sigterm_outside_the_training_loop_is_one_line_and_143(monkeypatch, capsys):
    """Start-up, loading, evaluating: SIGTERM interrupts like Ctrl-C, never a traceback."""
    import modinv.cli.info as info
    from modinv.cli import main

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(info, "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", "--model", "mobilenet-v2", "--weights", "random"]) == 143
    assert capsys.readouterr().err == "modinv info: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


@pytest.mark.parametrize("error", [KeyboardInterrupt])
def test_ctrl_c_while_the_parser_is_built_is_one_line(monkeypatch, capsys, error):
    import modinv.cli as cli

    def interrupted(*_args):
        raise error()

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == "modinv: interrupted\n"
