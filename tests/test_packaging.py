"""The built package works outside the clone.

Builds the sdist and the wheel (``python -m build``, the wheel from the sdist), checks their
metadata (``twine check --strict``), installs the wheel (not editable) into fresh virtual
environments and runs the CLI from a folder outside the clone. A fresh venv would copy GBs of
torch, so each venv sees the running environment's packages through a ``.pth`` file pointing at a
folder of links to them (the modinv checkout itself left out): pip counts those as installed, and
whatever it installs lands in the new venv, in front of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import modinv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "outputs", "runs", "site", "dist", "build",
                                       "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc")
OLDER_PILLOW = "12.2.0"  # inside pyproject's range, older than constraints.txt's pin (12.3.0)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run ``cmd``; fail the test with its output when it exits non-zero; return that output."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{output[-4000:]}"
    return output


def _shared_site(tmp: Path) -> Path:
    """A folder of links to the running environment's packages, without modinv itself."""
    shared = tmp / "shared-site"
    shared.mkdir()
    for key in ("purelib", "platlib"):
        for entry in Path(sysconfig.get_paths()[key]).iterdir():
            name = entry.name.lower()
            if "modinv" in name or entry.suffix == ".pth" or (shared / entry.name).exists():
                continue
            (shared / entry.name).symlink_to(entry)
    return shared


def _fresh_venv(path: Path, shared: Path) -> Path:
    """A new virtual environment that also sees ``shared``; returns its bin folder. It has no pip
    (nor the old setuptools that ensurepip would add): ``_pip`` drives it from outside."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    purelib = _run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=path.parent).strip()
    Path(purelib, "zz_shared_site.pth").write_text(f"{shared}\n", encoding="utf-8")
    return path / "bin"


def _pip(bin_dir: Path, *args: str) -> str:
    """``pip install ARGS`` into the venv of ``bin_dir``, with this environment's pip."""
    return _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--quiet", *args],
                cwd=bin_dir.parent)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist, the wheel, the build output and the shared-site folder, built once per module."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE)
    log = _run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(source)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("modinv-*.whl")
    (sdist,) = (tmp / "dist").glob("modinv-*.tar.gz")
    return {"tmp": tmp, "wheel": wheel, "sdist": sdist,
            "shared": _shared_site(tmp), "build_output": log}


def test_build_is_clean_and_twine_accepts_the_metadata(built):
    assert "SetuptoolsDeprecationWarning" not in built["build_output"]
    assert built["wheel"].name == f"modinv-{modinv.__version__}-py3-none-any.whl"
    _run([sys.executable, "-m", "twine", "check", "--strict", str(built["wheel"]), str(built["sdist"])],
         cwd=built["tmp"])


def test_every_runtime_file_of_the_package_is_in_the_wheel(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    package = ROOT / "src" / "modinv"
    data = [p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert any(p.name == "py.typed" for p in data)
    missing = [str(p.relative_to(package.parent)) for p in data
               if str(p.relative_to(package.parent)).replace(os.sep, "/") not in names]
    assert not missing, f"not in the wheel: {missing}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(built["wheel"]).read(metadata).decode()
    assert "License-Expression: MIT" in text


def test_the_wheel_runs_outside_the_clone_in_a_fresh_venv(built):
    tmp = built["tmp"]
    bin_dir = _fresh_venv(tmp / "venv", built["shared"])
    _pip(bin_dir, "--no-index", "-c", str(ROOT / "constraints.txt"), str(built["wheel"]))
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    where = _run([str(bin_dir / "python"), "-c",
                  "import importlib.metadata as m, modinv; print(modinv.__file__, modinv.__version__, m.version('modinv'))"],
                 cwd=elsewhere, env=env).split()
    assert where[0].startswith(str(tmp / "venv")), f"modinv imported from {where[0]}, not the wheel"
    assert where[1] == where[2] == modinv.__version__
    modinv_cli = str(bin_dir / "modinv")
    if "--version" in _run([modinv_cli, "--help"], cwd=elsewhere, env=env):
        assert modinv.__version__ in _run([modinv_cli, "--version"], cwd=elsewhere, env=env)
    info = _run([modinv_cli, "info", "--model", "mobilenet-v2", "--weights", "random"], cwd=elsewhere, env=env)
    assert "s32" in info
    _run([modinv_cli, "train", "--model", "mobilenet-v2", "--weights", "random", "--data", "samples",
          "--steps", "2", "--batch", "2", "--input-size", "64", "64", "--val-every", "2",
          "--val-batches", "1", "--no-progress", "--out", "run"], cwd=elsewhere, env=env)
    assert (elsewhere / "run" / "best" / "manifest.json").is_file()


def test_a_compatible_older_pillow_is_kept_when_the_wheel_installs(built):
    tmp = built["tmp"]
    bin_dir = _fresh_venv(tmp / "venv-older-pillow", built["shared"])
    python = str(bin_dir / "python")
    _pip(bin_dir, f"pillow=={OLDER_PILLOW}")
    _pip(bin_dir, str(built["wheel"]))  # no constraints: pip may pick any pillow in the wheel's range
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    versions = _run([python, "-c", "import PIL, modinv.data; print(PIL.__version__, PIL.__file__)"],
                    cwd=tmp, env=env).split()
    assert versions[0] == OLDER_PILLOW
    assert versions[1].startswith(str(tmp / "venv-older-pillow"))
