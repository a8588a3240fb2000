"""A few hundred generated malformed, truncated, oversized and odd image files through ``nrinv invert``,
by the API and by the command line: each either works, or is refused with one line (the API raises
``InputError``; the CLI exits 2 with one line on stderr and writes nothing) — never a traceback."""
import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import nrinv
from nrinv.errors import InputError

PROMPT = "a photo of a cat"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (valid CRC), with a tiny or no image body."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _cases() -> list[tuple[str, bytes]]:
    rng = random.Random(20261127)
    nrng = np.random.default_rng(20261127)
    base = Image.fromarray(nrng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    gray16 = Image.fromarray((nrng.integers(0, 65536, (32, 32))).astype(np.uint16))
    valid = {
        "rgb.png": _encode(base, "PNG"), "rgba.png": _encode(base.convert("RGBA"), "PNG"),
        "l.png": _encode(base.convert("L"), "PNG"), "la.png": _encode(base.convert("LA"), "PNG"),
        "p.png": _encode(base.convert("P"), "PNG"), "1.png": _encode(base.convert("1"), "PNG"),
        "i16.png": _encode(gray16, "PNG"), "i32.tif": _encode(base.convert("I"), "TIFF"),
        "f.tif": _encode(base.convert("F"), "TIFF"), "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG"),
        "rgb.jpg": _encode(base, "JPEG"), "rgb.bmp": _encode(base, "BMP"), "rgb.gif": _encode(base, "GIF"),
        "rgb.webp": _encode(base, "WEBP"), "rgb.tif": _encode(base, "TIFF"), "ycbcr.jpg": _encode(base, "JPEG"),
        "odd.png": _encode(base.resize((31, 17)), "PNG"), "tall.png": _encode(base.resize((2, 64)), "PNG"),
        "one.png": _encode(base.resize((1, 1)), "PNG"), "wide.png": _encode(base.resize((64, 2)), "PNG"),
        "anim.gif": _encode(base, "GIF", save_all=True, append_images=[base.rotate(90)]),
    }
    cases = list(valid.items())
    cases += [("empty.png", b""), ("one-byte.png", b"\x89"), ("text.png", b"this is not an image\n" * 10),
              ("html.jpg", b"<html><body>no</body></html>"), ("zeros.bmp", b"\x00" * 512)]
    cases += [("bomb.png", _png_header_only(100_000, 100_000)), ("zero-size.png", _png_header_only(0, 0)),
              ("line.png", _png_header_only(1, 100_000)), ("deep.png", _png_header_only(64, 64, depth=16, color=6)),
              ("bad-depth.png", _png_header_only(32, 32, depth=3, color=2)),
              ("bad-color.png", _png_header_only(32, 32, depth=8, color=7))]
    for magic, name in ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff\xe0", "jpg"), (b"GIF89a", "gif"),
                        (b"BM", "bmp"), (b"II*\x00", "tif"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp")):
        for i in range(6):
            tail = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
            cases.append((f"magic-{name}-{i}.{name}", magic + tail))
    for name, data in valid.items():
        for i in range(6):  # truncated at random offsets
            cases.append((f"cut{i}-{name}", data[:rng.randrange(0, len(data))]))
        for i in range(4):  # bytes flipped in the body
            flipped = bytearray(data)
            for _ in range(rng.randrange(1, 8)):
                pos = rng.randrange(min(len(flipped) - 1, 16), len(flipped))
                flipped[pos] = rng.randrange(256)
            cases.append((f"flip{i}-{name}", bytes(flipped)))
    return cases


CASES = _cases()


def test_there_are_a_few_hundred_cases():
    assert len(CASES) >= 250


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    for name, data in CASES:
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def adapter():
    from nrinv.testing import tiny_pipeline

    return nrinv.core.adapter_for(tiny_pipeline("sd"))


def test_the_api_works_or_refuses_in_one_line(files, adapter):
    worked = refused = 0
    for name, _ in CASES:
        try:
            res = nrinv.invert(adapter, files / name, PROMPT, num_inference_steps=1, method="ddim")
        except InputError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Traceback" not in message, (name, message)
            refused += 1
            continue
        assert res.finite and res.latents.shape[0] == 1, name
        worked += 1
    assert worked >= 15 and refused >= 200, (worked, refused)


def test_the_cli_works_or_exits_2_with_one_line_and_writes_nothing(files, adapter, tmp_path, capsys, monkeypatch):
    import nrinv.cli.invert as cli_invert
    from nrinv.cli import main

    monkeypatch.setattr(cli_invert, "load_model", lambda *a, **k: adapter)
    codes = {0: 0, 2: 0}
    for i, (name, _) in enumerate(CASES):
        out = tmp_path / f"out-{i}.latent.safetensors"
        capsys.readouterr()
        code = main(["invert", str(files / name), "--prompt", PROMPT, "--steps", "1", "--method", "ddim",
                     "-o", str(out), "--quiet", "--model", "tiny"])
        err = capsys.readouterr().err
        assert code in (0, 2), (name, code, err)
        codes[code] += 1
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("nrinv invert: error: "), (name, err)
            assert not out.exists() and not out.with_suffix(".json").exists(), name
        else:
            assert err == "" and out.is_file(), (name, err)
    assert list(tmp_path.glob(".*.tmp")) == []  # no temporary files left behind
    assert codes[0] >= 15 and codes[2] >= 200, codes


def test_a_real_process_prints_one_line_for_corrupt_files(files, tmp_path):
    """No warning or traceback reaches stderr of the real command (pytest captures warnings in-process)."""
    import os
    import subprocess
    import sys

    names = [n for n, _ in CASES if n.startswith(("flip0-i32.tif", "cut0-rgb.jpg", "bomb.png", "magic-tif-0",
                                                   "flip1-rgb.tif"))]
    assert len(names) == 5
    for name in names:
        out = tmp_path / f"{name}.latent.safetensors"
        done = subprocess.run([sys.executable, "-m", "nrinv", "invert", str(files / name), "--prompt", PROMPT,
                               "--steps", "1", "-o", str(out), "--quiet"], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if done.returncode == 2:
            assert len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
            assert not out.exists()
        else:
            assert done.returncode == 0 and done.stderr == "", (name, done.returncode, done.stderr)
