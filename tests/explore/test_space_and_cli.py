"""``modinv explore`` on the command line (serving, Ctrl-C, option errors) and the exported Space folder."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import modinv.cli
from modinv.errors import ModinvError

gr = pytest.importorskip("gradio")
from modinv.explore.space import export_space  # noqa: E402 - needs gradio


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory, mnet_chain) -> Path:
    return mnet_chain.save(tmp_path_factory.mktemp("chain") / "inverse")


def test_export_space_folder_runs_against_a_local_chain(tmp_path, chain_dir, monkeypatch):
    import yaml

    assert modinv.cli.main(["explore", "--export-space", str(tmp_path / "space"), "--inverse", "hf:someone/mnet-inv"]) == 0
    folder = tmp_path / "space"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["sdk_version"] == gr.__version__
    assert meta["models"] == ["someone/mnet-inv"]
    assert "modinv[app]" in (folder / "requirements.txt").read_text()
    spec = importlib.util.spec_from_file_location("space_app", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing it builds nothing (a Space runs it as __main__)
    assert module.CHAINS == ["hf:someone/mnet-inv"]
    app = module.build([str(chain_dir)])
    assert isinstance(app, gr.Blocks) and "mobilenet-v2" in app.title
    monkeypatch.setenv("MODINV_CHAINS", str(chain_dir))
    assert isinstance(module.build(), gr.Blocks)


def test_export_space_needs_hub_chains(tmp_path, chain_dir):
    with pytest.raises(ModinvError, match="push"):
        export_space(tmp_path, [str(chain_dir)])


def test_serving_needs_a_model(capsys, chain_dir):
    assert modinv.cli.main(["explore", "--inverse", str(chain_dir)]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_serves_on_loopback_and_stops_on_ctrl_c(chain_dir, free_port):
    """The real command in a child process: prints its loopback address, serves the page, and
    exits cleanly (status 0) on SIGINT."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "modinv", "explore", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu",
         "--input-size", "64", "64", "--inverse", str(chain_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        while "Ctrl-C" not in line:
            line = child.stdout.readline()
            assert line, f"the command ended before serving (status {child.wait()})"
        assert f"http://127.0.0.1:{port}/" in line
        assert b"modinv explore" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60).read()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 0
        assert "stopped" in child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()


def test_without_gradio_one_sentence(monkeypatch, explorer):
    from modinv.explore.app import build_app

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if not installed
    with pytest.raises(ModinvError, match=r"pip install 'modinv\[app\]'"):
        build_app(explorer)
