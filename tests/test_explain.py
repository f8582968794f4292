"""Feature maps by stage and Grad-CAM: the seed's shapes in the titles, a known answer, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from helpers import SEED_TRACE, one_line_error, plain_config
from resnetlab.cli import main
from resnetlab.engine import fit
from resnetlab.inference.explain import stage_outputs

SEED_STAGES = SEED_TRACE.splitlines()[:5]  # the seed's printed lines for b1..b5 on 1x1x256x256

SIDE, PATCH = 32, 10


def _stripes(horizontal: bool) -> np.ndarray:
    """The class evidence: a PATCH x PATCH patch of bright stripes, 2 px apart."""
    patch = np.zeros((PATCH, PATCH), dtype=np.float32)
    if horizontal:
        patch[::3, :] = 1
    else:
        patch[:, ::3] = 1
    return patch


def stripes_and_blob(rng: np.random.Generator, label: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """A gray image whose class is the orientation of a striped patch (0 horizontal, 1 vertical) at a random
    place, with a solid bright blob (in every image, so it carries no class) at another; and both corners."""
    image = rng.uniform(0, 40, (SIDE, SIDE)).astype(np.float32)
    while True:
        ey, ex, dy, dx = rng.integers(0, SIDE - PATCH, 4)
        if abs(ey - dy) >= PATCH or abs(ex - dx) >= PATCH:  # apart
            break
    image[ey:ey + PATCH, ex:ex + PATCH] += 200 * _stripes(label == 0)
    image[dy:dy + PATCH, dx:dx + PATCH] = 230
    return np.clip(image, 0, 255).astype(np.uint8), (int(ey), int(ex)), (int(dy), int(dx))


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    """A class folder of the stripes set, a classifier trained on it in seconds, and held-out images with their corners."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 300), ("val", 60)):
        for i in range(count):
            label = i % 2
            image, _, _ = stripes_and_blob(rng, label)
            folder = root / "data" / split / ("horizontal" if label == 0 else "vertical")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    result = fit(plain_config(data=str(root / "data"), model="d2l_resnet18", image_size=SIDE, epochs=6, batch_size=30,
                              optimizer="adamw", lr=0.002, precision="fp32", out=str(root / "run")), log=lambda s: None)
    held_out = [stripes_and_blob(rng, i % 2) + (i % 2,) for i in range(40)]
    return root / "run" / "best.safetensors", result, held_out


@pytest.mark.slow
def test_grad_cam_is_denser_on_the_evidence_than_on_the_distractor(stripes):
    ckpt, result, held_out = stripes
    assert result.best_val_acc >= 0.95  # the classifier learnt the orientation
    clf = resnetlab.load(ckpt)
    images = [torch.from_numpy(image)[None] for image, _, _, _ in held_out]
    predictions = clf.predict(images, top_k=1)
    # b3 gives 4x4 maps at 32 px here (b5 of the seed's net is 1x1: no place left to point at).
    heatmaps = clf.explain(images, stage="b3")
    assert heatmaps.shape == (len(images), SIDE, SIDE) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    evidence, distractor = [], []
    for heatmap, prediction, (_, (ey, ex), (dy, dx), label) in zip(heatmaps, predictions, held_out):
        if prediction.label != ("horizontal" if label == 0 else "vertical"):
            continue
        evidence.append(heatmap[ey:ey + PATCH, ex:ex + PATCH].mean().item())
        distractor.append(heatmap[dy:dy + PATCH, dx:dx + PATCH].mean().item())
    ratio = np.mean(evidence) / max(np.mean(distractor), 1e-6)
    # Measured 2026-11-28 on data seeds 0, 1, 2: 2.3, 2.8, 1.8 times denser at b3 (b2, 8x8 maps: 4.5, 3.5, 2.7;
    # b4, 2x2 maps: 1.3, 1.3, 1.1). A map that ignored the evidence would give about 1.
    assert len(evidence) >= 30 and ratio >= 1.5, (ratio, len(evidence))
    # The other class's map for the same images points elsewhere than the top class's.
    other = clf.explain(images[:4], target="vertical", stage="b3")
    assert other.shape == (4, SIDE, SIDE)


def test_maps_titles_carry_the_seeds_shapes(tmp_path, capsys):
    out = tmp_path / "maps.png"
    assert main(["maps", "d2l_resnet18", "--input-size", "1,1,256,256", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:5] == SEED_STAGES  # the seed's b1..b5 lines, exactly
    assert out.read_bytes()[:4] == b"\x89PNG"
    net = resnetlab.d2l_resnet18()
    lines = [o.line for o in stage_outputs(net, torch.rand(1, 1, 256, 256))]
    assert lines == SEED_STAGES
    family = [o.name for o in stage_outputs(resnetlab.resnet18(in_channels=1), torch.rand(1, 1, 64, 64))]
    assert family == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_explain_and_maps_of_a_checkpoint_through_the_command_line(ckpt, tiny_data, tmp_path, capsys):
    from resnetlab.data import load_split

    test = load_split(tiny_data, "test")
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(test.images[i, 0].numpy()).save(files[-1])
    assert main(["explain", str(ckpt), *files, "--out", str(tmp_path / "ex"), "--class", "Sneaker"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].startswith(f"wrote {tmp_path / 'ex' / 'sheet.png'}")
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["img0.explain.png", "img1.explain.png",
                                                                    "img2.explain.png", "sheet.png"]
    assert main(["maps", str(ckpt), files[0], "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", str(ckpt), "--explain", "--out", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    # Bad input: one line, exit 2.
    one_line_error(capsys, ["explain", str(ckpt), files[0], "--class", "Teapot"], "--class 'Teapot' is not a class",
                   "Sneaker")
    one_line_error(capsys, ["explain", str(ckpt), files[0], "--stage", "layer9"], "--stage 'layer9' is not a stage",
                   "layer4")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    one_line_error(capsys, ["explain", str(ckpt), str(notes)], "notes.png", "not an image")
    one_line_error(capsys, ["maps", "resnet999", "--out", str(tmp_path / "x.png")], "resnet999")
    one_line_error(capsys, ["maps", str(ckpt), "--out", str(tmp_path / "x.png")], "an IMAGE is needed")


def test_explain_from_python_for_three_channel_models(tmp_path):
    from helpers import write_shape_folder

    data = write_shape_folder(tmp_path / "shapes", per_class=8, sizes=(16,))
    fit(plain_config(data=str(data), model="resnet18", model_args={"stem": "small"}, epochs=1,
                                      batch_size=8, precision="fp32", out=str(tmp_path / "run")), log=lambda s: None)
    clf = resnetlab.load(tmp_path / "run" / "best.safetensors")
    assert clf.channels == 3
    maps = clf.explain([torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)] * 2)
    assert maps.shape == (2, 16, 16) and maps.dtype == torch.float32
    assert clf.explain([torch.zeros(3, 16, 16, dtype=torch.uint8)], target=0, stage="layer3").shape == (1, 16, 16)


def test_the_default_grad_cam_stage_is_the_last_with_maps_of_at_least_4x4():
    from resnetlab import create_model
    from resnetlab.inference.explain import default_stage

    seed_net = create_model("d2l_resnet18").eval()
    assert default_stage(seed_net, torch.zeros(1, 1, 28, 28)) == "b3"  # b4 is 2x2, b5 1x1 at 28 px
    assert default_stage(seed_net, torch.zeros(1, 1, 96, 96)) == "b4"  # b5 is 3x3 at the book's 96 px
    small = create_model("resnet18", in_channels=1, num_classes=3, stem="small").eval()
    assert default_stage(small, torch.zeros(1, 1, 32, 32)) == "layer4"  # 4x4
    assert default_stage(seed_net, torch.zeros(1, 1, 8, 8)) == "b1"  # nothing reaches 4x4: the first stage


def test_explain_takes_a_folder_in_chunks(ckpt, tiny_data, tmp_path, capsys, monkeypatch):
    import resnetlab.cli.explain as explain
    from resnetlab.inference.classifier import Classifier
    from resnetlab.data import load_split

    test = load_split(tiny_data, "test")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(test.images[i, 0].numpy()).save(folder / f"img{i}.png")
    sizes, real = [], Classifier.explain

    def counting(self, images, *args, **kwargs):
        sizes.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Classifier, "explain", counting)
    monkeypatch.setattr(explain, "EXPLAIN_CHUNK", 3)
    monkeypatch.setattr(explain, "SHEET_IMAGES", 5)
    assert main(["explain", str(ckpt), str(folder), "--out", str(tmp_path / "ex")]) == 0
    assert sizes == [3, 3, 1]  # never all images' activations at once
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8 and out[-1] == f"wrote {tmp_path / 'ex' / 'sheet.png'}: the first 5 of 7 images"
    assert len(list((tmp_path / "ex").glob("*.explain.png"))) == 7
    # In chunks or at once, each image gets the same heatmap.
    clf = resnetlab.load(ckpt)
    pixels = [clf.to_uint8(path) for path in sorted(folder.iterdir())]
    together = real(clf, pixels)
    apart = torch.cat([real(clf, pixels[i : i + 3]) for i in range(0, 7, 3)])
    assert torch.allclose(together, apart, atol=1e-5)


def test_explaining_puts_back_each_submodules_own_mode():
    """A batch norm the caller froze in eval mode inside a training model stays frozen after stage outputs and Grad-CAM."""
    from resnetlab.inference.explain import grad_cam
    from resnetlab.models import create_model

    net = create_model("d2l_resnet18", in_channels=1, num_classes=10).train()
    frozen = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()
    modes = {m: m.training for m in net.modules()}
    x = torch.rand(2, 1, 32, 32)
    stage_outputs(net, x)
    assert {m: m.training for m in net.modules()} == modes
    grad_cam(net, x)
    assert {m: m.training for m in net.modules()} == modes
