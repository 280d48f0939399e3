"""Files modinv writes get the mode the user's umask gives new files (issue 26, item 7): atomic
writes go through a temporary file, whose private 0600 mode must not reach the result."""

from __future__ import annotations

import os
import stat

import pytest

from modinv.fileio import atomic_write_bytes, atomic_write_text, current_umask, write_json


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_writes_get_the_umask_mode(umask, tmp_path):
    expected = 0o666 & ~umask
    for path, write in [(tmp_path / "a.json", lambda p: write_json(p, {"a": 1})),
                        (tmp_path / "b.txt", lambda p: atomic_write_text(p, "b")),
                        (tmp_path / "c.bin", lambda p: atomic_write_bytes(p, b"c"))]:
        write(path)
        assert _mode(path) == expected, (path.name, oct(_mode(path)))
        os.chmod(path, 0o600)  # a replaced file gets it too
        write(path)
        assert _mode(path) == expected
