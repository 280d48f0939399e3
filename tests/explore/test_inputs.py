"""Uploads the explorer refuses with one sentence, and files it converts with a note."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modinv.errors import ModinvError
from modinv.explore import read_upload

SIZE = (64, 64)


def huge_png(path, width: int = 20000, height: int = 20000):
    """A tiny PNG file whose header claims ``width``×``height`` pixels (a decompression bomb)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))
    return path


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ModinvError, match="not an image"):
        read_upload(path, SIZE)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    with pytest.raises(ModinvError, match="too large"):
        read_upload(huge_png(tmp_path / "bomb.png"), SIZE)
    with pytest.raises(ModinvError, match="too large"):  # above modinv's limit, below Pillow's error
        read_upload(huge_png(tmp_path / "big.png", 15000, 15000), SIZE)


def test_one_pixel_is_refused(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    with pytest.raises(ModinvError, match="1×1 pixels"):
        read_upload(tmp_path / "dot.png", SIZE)


def test_truncated_file(tmp_path):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModinvError, match="read"):
        read_upload(tmp_path / "cut.jpg", SIZE)


def test_sixteen_bit_and_cmyk_are_converted_with_a_note(tmp_path):
    Image.fromarray(np.full((40, 50), 32768, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    photo = read_upload(tmp_path / "sixteen.png", SIZE)
    assert photo.image.shape == (3, *SIZE) and photo.image.mean().item() == pytest.approx(32768 / 65535, abs=1e-4)
    assert "16-bit" in photo.notes[0]
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    photo = read_upload(tmp_path / "cmyk.jpg", SIZE)
    assert "CMYK" in photo.notes[0] and photo.image[0].mean() > 0.9 > 0.1 > photo.image[1].mean()
