"""Start-up: ``import modinv`` / ``import modinv.cli`` load no torch, so Ctrl-C in the first second of
a command (while torch and the command's modules load) prints one line and exits 130."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import modinv
import modinv.cli as cli

SRC = str(Path(modinv.__file__).parent.parent)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_importing_the_cli_loads_no_torch():
    done = _python("import modinv, modinv.cli, sys; print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_ctrl_c_while_torch_loads_is_one_line():
    """A KeyboardInterrupt raised by the import of torch (where start-up spends its first seconds)."""
    done = _python("""
        import sys

        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, CtrlC())
        from modinv.cli import main
        sys.exit(main(["info", "--model", "mobilenet-v2"]))
    """)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["modinv: interrupted"]


def test_ctrl_c_while_a_command_module_loads_is_one_line(monkeypatch, capsys):
    def interrupted(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["info", "--model", "mobilenet-v2"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["modinv: interrupted"]


def test_public_names_load_on_first_use():
    from modinv import InverseChain, ModinvError, load_model  # noqa: F401 (the import is the test)

    assert set(modinv.__all__) <= set(dir(modinv))
    assert all(getattr(modinv, name) is not None for name in modinv.__all__)
    assert modinv.load_model is load_model and issubclass(ModinvError, Exception)
    assert isinstance(modinv.__version__, str)
    try:
        modinv.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
