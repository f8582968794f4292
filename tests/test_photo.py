"""Photos against Fashion-MNIST-like images: the header's intensities, the warning, --invert and --center.

The "photo" is made from a Fashion-MNIST-like image (a light garment filling a black 28x28 frame)
the way a phone sees such an object: four times larger, dark on a light, textured (noise)
surface, off centre.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import resnetlab
from resnetlab.inference.classifier import UnlikeTrainingWarning
from resnetlab.cli import main
from resnetlab.data import load_split
from resnetlab.data.stats import border_mean, intensity_stats
from resnetlab.inference.photo import background_mismatch, center_on_object, invert

LIGHT = "a light background, unlike the training images (dark)"


def garment() -> np.ndarray:
    """A light T-shirt-like shape filling its 28 pixels' height on black, as Fashion-MNIST has them: uint8 [28, 28]."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    draw.polygon([(9, 0), (18, 0), (27, 6), (23, 10), (21, 8), (21, 27), (6, 27), (6, 8), (4, 10), (0, 6)], fill=210)
    draw.ellipse([10, 8, 17, 15], fill=150)  # some inner shading
    return np.asarray(image).copy()


def photo_of(original: np.ndarray, rgb: bool = False, seed: int = 0) -> np.ndarray:
    """``original`` (uint8 [28, 28], light on black) as a phone photo: x4, dark on light noise, up and to the right."""
    rng = np.random.default_rng(seed)
    big = np.asarray(Image.fromarray(original).resize((112, 112), Image.BILINEAR)).astype(np.int64)
    surface = rng.integers(170, 231, size=(180, 240, 3) if rgb else (180, 240))
    y, x = 20, 110
    if rgb:  # a brownish-gray object on a bluish-white surface
        surface[..., 2] = np.minimum(255, surface[..., 2] + 20)
        dark = np.stack([255 - big, 255 - big - 10, 255 - big - 20], axis=-1).clip(0, 255)
        surface[y : y + 112, x : x + 112] = np.minimum(surface[y : y + 112, x : x + 112], dark)
    else:
        surface[y : y + 112, x : x + 112] = np.minimum(surface[y : y + 112, x : x + 112], 255 - big)
    return surface.astype(np.uint8)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture
def pictures(tmp_path):
    """The original and its photo as PNG files."""
    original = garment()
    Image.fromarray(original).save(tmp_path / "original.png")
    Image.fromarray(photo_of(original)).save(tmp_path / "photo.png")
    return tmp_path / "original.png", tmp_path / "photo.png"


def test_invert_and_border_mean():
    image = torch.zeros(1, 10, 12, dtype=torch.uint8)
    image[:, 2:-2, 2:-2] = 255  # light inside, dark on the outer 2 pixels
    assert border_mean(image) == 0.0 and border_mean(invert(image)) == 1.0
    assert invert(image).dtype == torch.uint8 and torch.equal(invert(invert(image)), image)
    rgb = torch.full((3, 6, 6), 51, dtype=torch.uint8)
    assert border_mean(rgb) == pytest.approx(0.2)


def test_the_background_rule():
    assert background_mismatch(0.09, 0.75) == LIGHT  # Fashion-MNIST and a photo
    assert background_mismatch(0.09, 0.2) is None and background_mismatch(0.09, 0.45) is None
    assert background_mismatch(0.9, 0.2) == "a dark background, unlike the training images (light)"
    assert background_mismatch(0.9, 0.6) is None
    assert background_mismatch(0.5, 0.0) is None and background_mismatch(0.5, 1.0) is None  # neither dark nor light


def test_intensity_stats_by_hand_and_on_a_sample():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images[:, :, :2] = 255  # the top two rows: 16 of the 48 border pixels, 16 of the 64 pixels
    assert intensity_stats(images) == pytest.approx((0.25, 1 / 3))
    gen = torch.Generator().manual_seed(0)
    many = torch.randint(0, 256, (25_000, 3, 8, 8), dtype=torch.uint8, generator=gen)
    many[::2, :, 3:5, 3:5] = 0  # only inside: the border is untouched
    mean, border = intensity_stats(many)  # every 3rd image: 8,334 of them
    exact = many.double().mean().item() / 255
    assert mean == pytest.approx(exact, abs=0.002) and border == pytest.approx(127.5 / 255, abs=0.002)
    assert intensity_stats(many[:0]) == (0.0, 0.0)


def test_the_header_keeps_the_training_images_intensity(ckpt, tiny_data):
    pre = resnetlab.load(ckpt).preprocess
    train = load_split(tiny_data, "train").images
    mean, border = intensity_stats(train)  # the run trained on 500 of these 600
    assert pre.pixel_mean == pytest.approx(mean, abs=0.01) and pre.border_mean == pytest.approx(border, abs=0.01)
    assert pre.border_mean < 0.25  # the generated images are bars on a dark background, as Fashion-MNIST's


def test_center_on_object_finds_the_object_in_the_photo():
    original = garment()
    photo = torch.from_numpy(photo_of(original))[None]
    fixed = center_on_object(invert(photo))
    # The object is 112 pixels square; the box, in blocks of 4 pixels of the shrunk copy, 116.
    assert fixed.shape[1] == fixed.shape[2] and 112 <= fixed.shape[1] <= 120
    assert abs(int(fixed[0, 0, 0]) - (255 - 200)) <= 2  # padded with the (inverted) surface's median (200)
    # Centring commutes with inverting, up to the rounding of the background's median.
    assert (center_on_object(photo).int() - invert(fixed).int()).abs().max() <= 1


def test_center_on_object_in_three_channels():
    photo = torch.from_numpy(photo_of(garment(), rgb=True)).permute(2, 0, 1).contiguous()
    fixed = center_on_object(photo)
    assert fixed.shape[0] == 3 and fixed.shape[1] == fixed.shape[2] and 112 <= fixed.shape[1] <= 120
    # The padding is the background, per channel (the surface is bluer), and the object sits in the middle.
    corner = fixed[:, 0, 0].tolist()
    assert 190 <= corner[0] <= 210 and corner[2] > corner[0] + 10
    dark = (fixed.int().sum(0) < 3 * 120).nonzero()
    rows, cols = dark[:, 0], dark[:, 1]
    side = fixed.shape[1]
    assert abs(int(rows.min()) - (side - 1 - int(rows.max()))) <= 6
    assert abs(int(cols.min()) - (side - 1 - int(cols.max()))) <= 6


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 40, 30), (1, 3, 3), (3, 1, 1)])
def test_center_on_object_without_an_object_returns_the_image(shape):
    uniform = torch.full(shape, 200, dtype=torch.uint8)
    assert torch.equal(center_on_object(uniform), uniform)
    noise = torch.randint(170, 231, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(center_on_object(noise), noise)  # texture alone is no object


def test_the_photo_is_warned_of_and_invert_center_fix_it(ckpt, pictures):
    clf = resnetlab.load(ckpt)
    original, photo = pictures
    assert clf.unlike_training(clf.to_uint8(photo)) == LIGHT
    assert clf.unlike_training(clf.to_uint8(original)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all for images like the training ones
        clf.predict([original, original])
        fixed = clf.prepare([photo], invert=True, center=True)
        clf.predict([photo], invert=True, center=True)
    with pytest.warns(UnlikeTrainingWarning) as caught:
        clf.predict([photo, original, photo])
    assert len(caught) == 1  # once per call, not per image
    assert str(caught[0].message) == (f"2 of 3 images have {LIGHT}; try invert=True (and center=True if the object is "
                                      "off centre or small)")
    assert caught[0].filename == __file__  # it points at the caller
    with pytest.warns(UnlikeTrainingWarning, match="the image has a light background.*invert=True made it so"):
        clf.probabilities([original], invert=True)
    assert len(clf.predict([photo], warn=False)) == 1

    # Inverted and centred, the photo is the model's input the original is, up to the surface's texture and
    # level: the correlation is 0.944 (the photo as it is: -0.29; only inverted: +0.29).
    want = clf.prepare([original])
    assert correlation(fixed, want) > 0.9
    assert abs(correlation(clf.prepare([photo]), want)) < 0.5 and correlation(clf.prepare([photo], invert=True), want) < 0.5
    # In pixels (before the standardisation) they differ by 0.12 on average: the surface, inverted, is a dark gray
    # (55 of 255), not black.
    pixels = clf.to_uint8(photo, invert=True, center=True).float() / 255
    assert (pixels - clf.to_uint8(original).float() / 255).abs().mean() < 0.15


def test_predict_command_warns_and_takes_invert_and_center(ckpt, pictures, tmp_path, capsys):
    original, photo = pictures
    assert main(["predict", str(ckpt), str(photo)]) == 0  # a warning, not an error
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"resnetlab predict: warning: {photo} has {LIGHT}; try --invert (and --center if the object is off centre or small)"
    ]
    assert captured.out.startswith(str(photo))

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(photo_of(garment(), seed=i)).save(folder / f"photo{i}.png")
    Image.open(original).save(folder / "scan.png")
    assert main(["predict", str(ckpt), str(folder), "--format", "json"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnetlab predict: warning: 3 of 4 images have {LIGHT}; try --invert (and --center if the object "
                   "is off centre or small)"]

    assert main(["predict", str(ckpt), str(photo), "--invert", "--center", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.splitlines()[1].startswith(f"{photo},1,")
    assert main(["predict", str(ckpt), str(original), "--invert"]) == 0
    assert capsys.readouterr().err.strip() == (f"resnetlab predict: warning: {original} has {LIGHT}; --invert made it so; "
                                               "leave it out")


def test_an_old_header_without_the_intensities_loads_and_checks_nothing(ckpt, pictures, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from resnetlab.weights import read_header

    header = read_header(ckpt)
    strings = header.to_strings()
    assert strings["intensity"].startswith('{"mean": ')
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ckpt)), str(old), metadata={k: v for k, v in strings.items() if k != "intensity"})
    clf = resnetlab.load(old)
    assert clf.preprocess == replace(header.preprocess, pixel_mean=None, border_mean=None)
    original, photo = pictures
    assert clf.unlike_training(clf.to_uint8(photo)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict([photo])
    assert main(["predict", str(old), str(photo)]) == 0
    assert capsys.readouterr().err == ""
    # A header written without them says so the same way (null), and reads back the same.
    assert read_header(old).to_strings()["intensity"] == "null"
