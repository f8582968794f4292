"""Hostile and unusual image files on every path that reads them: predict, class folders, ``load(...).predict``."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.cli import main
from resnetlab.data.images import ImageError, read_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int) -> Path:
    """A valid gray PNG of side x side black pixels, compressed row by row (a few hundred KB for 20000)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def png_with_chunk(path: Path, kind: bytes, data: bytes) -> Path:
    """A small valid PNG with one extra chunk before the image data."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "PNG")
    raw = buf.getvalue()
    at = raw.index(b"IDAT") - 4
    path.write_bytes(raw[:at] + _chunk(kind, data) + raw[at:])
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """One file of each hostile or unusual kind."""
    d = tmp_path_factory.mktemp("hostile")
    files: dict[str, Path] = {}
    files["bomb"] = png_bomb(d / "bomb.png", 20000)  # over twice Pillow's limit: its DecompressionBombError
    files["large"] = png_bomb(d / "large.png", 10000)  # 100 million pixels: over the limit, under twice it
    good = d / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    files["truncated_jpeg"] = d / "truncated.jpg"
    files["truncated_jpeg"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    png = d / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(png)
    files["truncated_png"] = d / "truncated.png"
    files["truncated_png"].write_bytes(png.read_bytes()[:60])
    files["text_as_png"] = d / "notes.png"
    files["text_as_png"].write_text("not an image at all\n" * 10)
    files["empty"] = d / "empty.png"
    files["empty"].write_bytes(b"")
    files["ztxt_bomb"] = png_with_chunk(d / "ztxt.png", b"zTXt", b"k\x00\x00" + zlib.compress(bytes(64 << 20), 9))
    return files


# Files that are readable and should simply work, with what they must give.
def _unusual(d: Path) -> dict[str, tuple[Path, int]]:
    out: dict[str, tuple[Path, int]] = {}
    frames = [Image.new("L", (16, 16), v) for v in (200, 10, 90)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated gif, first frame"] = (d / "anim.gif", 200)
    frames[0].save(d / "pages.tif", save_all=True, append_images=frames[1:])
    out["multi-page tiff, first page"] = (d / "pages.tif", 200)
    Image.fromarray(np.full((16, 16), 50000, dtype=np.uint16)).save(d / "gray16.png")
    out["16-bit gray, scaled not clipped"] = (d / "gray16.png", round(50000 / 257))
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 120, 120, 120] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(d / "palette.png")
    out["palette with transparency"] = (d / "palette.png", 120)
    Image.new("CMYK", (16, 16), (0, 0, 0, 155)).save(d / "cmyk.jpg")
    out["CMYK jpeg"] = (d / "cmyk.jpg", 100)
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: a JPEG's APP1 segment filled up
    Image.new("L", (16, 16), 77).save(d / "big_exif.jpg", exif=exif.tobytes())
    out["jpeg with a 60 KB EXIF"] = (d / "big_exif.jpg", 77)
    png_with_chunk(d / "bad_exif.png", b"eXIf", b"MM\x00\x2a" + bytes(range(256)) * 4096)  # 1 MB of garbage EXIF
    out["png with a 1 MB unparsable EXIF"] = (d / "bad_exif.png", 128)
    Image.new("L", (16, 16), 33).save(d / "real_png.txt", "PNG")
    out["a PNG named .txt"] = (d / "real_png.txt", 33)
    return out


@pytest.mark.parametrize("kind", ["bomb", "large", "truncated_jpeg", "truncated_png", "text_as_png", "empty", "ztxt_bomb"])
def test_hostile_files_are_one_clear_error(hostile, kind):
    with pytest.raises(ImageError) as info:
        read_image(hostile[kind], 1, 28)
    assert str(info.value).startswith(str(hostile[kind]) + ": ")
    assert "\n" not in str(info.value)


def test_the_bomb_is_refused_before_its_pixels_are_held(hostile):
    # 20000 x 20000 gray is 400 MB decoded; the refusal must come from the header.
    code = (
        "import sys\n"
        "from resnetlab.data.images import ImageError, read_image\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(name, 1, 28)\n"
        "    except ImageError as exc:\n"
        "        print(exc)\n"
        # VmHWM: this process's peak resident memory (ru_maxrss would include the forking parent's)
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(hostile["bomb"]), str(hostile["large"])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "more than twice the 89,478,485 pixels read here, so Pillow refused to open it" in lines[0]
    assert "100,000,000 pixels, more than the 89,478,485" in lines[1]
    assert int(lines[-1]) < 400_000  # KB: the interpreter and torch, not the 100-400 MB of pixels


def test_unusual_files_are_read_right(tmp_path):
    for what, (path, value) in _unusual(tmp_path).items():
        pixels = read_image(path, 1, None)
        assert pixels.dtype == torch.uint8 and pixels.shape[0] == 1, what
        assert abs(int(pixels.float().median()) - value) <= 2, (what, pixels.float().median())
        assert read_image(path, 3, 8).shape == (3, 8, 8), what


def test_predict_names_each_bad_file_in_one_line_and_goes_on(ckpt, hostile, tmp_path, capsys):
    good = tmp_path / "ok.png"
    Image.new("L", (28, 28), 90).save(good)
    bad = [hostile[k] for k in ("bomb", "large", "truncated_jpeg", "text_as_png", "ztxt_bomb")]
    assert main(["predict", str(ckpt), str(good), *map(str, bad)]) == 1  # some files failed
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == len(bad) and all(e.startswith("resnetlab predict: error: ") for e in errors)
    assert [e.split("error: ")[1].split(":")[0] for e in errors] == list(map(str, bad))
    assert captured.out.count("\n") == 1 and captured.out.startswith(str(good))
    clf = resnetlab.load(ckpt)
    with pytest.raises(ImageError, match="bomb.png"):
        clf.predict([hostile["bomb"]])
    unusual = _unusual(tmp_path)
    assert len(clf.predict([path for path, _ in unusual.values()])) == len(unusual)


def test_class_folders_skip_hostile_files_with_one_warning(hostile, tmp_path, capsys):
    from helpers import write_shape_folder

    root = write_shape_folder(tmp_path / "shapes", per_class=6)
    for kind in ("bomb", "truncated_png", "text_as_png"):
        (root / "circle" / hostile[kind].name).write_bytes(hostile[kind].read_bytes())
    (tmp_path / "unusual").mkdir()
    for path, _ in _unusual(tmp_path / "unusual").values():  # readable: trained on, not skipped
        (root / "square" / f"unusual_{path.name}").write_bytes(path.read_bytes())
    args = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "8", "--model", "resnet18", "--image-size", "32",
            "--time-budget", "0", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if line.startswith("warning: skipped 3 file(s)")]
    assert len(warnings) == 1 and all(hostile[k].name in warnings[0] for k in ("bomb", "truncated_png", "text_as_png"))
    assert main([*args[:-1], str(tmp_path / "strict"), "--strict"]) == 2
    assert "--strict: 3 file(s)" in capsys.readouterr().err
