"""The device-resident loader: shapes, seeded order and augmentation, resume and rank slices."""

import torch

from resnetlab.data import Augment, DeviceLoader, ImageSet
from resnetlab.data.loader import _DX, _DY, _FLIP, _Y0, crop_at, draw_augmentation, erase_at, flip_where, mix_seed


# Each augmentation on its own, as the loader applies it: its parameters drawn, then applied (the loader draws a
# whole epoch's at once and applies them batch by batch).
def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    p = draw_augmentation(Augment(crop_padding=padding), len(images), images.shape[-2:], images.shape[-2:], gen)
    return crop_at(images, padding, p[:, _DY], p[:, _DX])


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    p = draw_augmentation(Augment(flip=True), len(images), images.shape[-2:], images.shape[-2:], gen)
    return flip_where(images, p[:, _FLIP])


def random_erase(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    p = draw_augmentation(Augment(erase_prob=prob), len(x), x.shape[-2:], x.shape[-2:], gen)
    return erase_at(x, p[:, _Y0:])


def make_set(n=40, size=8):
    images = torch.arange(n * size * size, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 1, size, size)
    return ImageSet(images, torch.arange(n) % 10, tuple("abcdefghij"))


def collect(loader, epoch=0, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch, start)]


def test_shapes_and_lengths():
    data = make_set(40)
    train = DeviceLoader(data, 16, shuffle=True, drop_last=True, image_size=12)
    assert len(train) == 2
    x, y = next(train.batches())
    assert x.shape == (16, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    evaluation = DeviceLoader(data, 16)
    assert len(evaluation) == 3 and sum(len(y) for _, y in evaluation.batches()) == 40


def test_evaluation_order_and_scaling():
    data = make_set(10)
    x, y = next(DeviceLoader(data, 10).batches())
    torch.testing.assert_close(x, data.images.float() / 255)
    assert torch.equal(y, data.labels)
    x, _ = next(DeviceLoader(data, 10, mean=[0.5], std=[0.25]).batches())
    torch.testing.assert_close(x, (data.images.float() / 255 - 0.5) / 0.25)


def test_order_is_seeded_per_epoch():
    data = make_set(40)
    a = DeviceLoader(data, 8, shuffle=True, seed=1)
    b = DeviceLoader(data, 8, shuffle=True, seed=1)
    assert torch.equal(a.order(3), b.order(3))
    assert not torch.equal(a.order(3), a.order(4))
    assert not torch.equal(a.order(3), DeviceLoader(data, 8, shuffle=True, seed=2).order(3))
    assert sorted(a.order(0).tolist()) == list(range(40))


def test_augmentation_is_reproducible_and_resumable():
    data = make_set(40)
    aug = Augment(crop_padding=2, flip=True, erase_prob=0.5)
    loader = DeviceLoader(data, 8, shuffle=True, drop_last=True, augment=aug, seed=5, image_size=16)
    full = collect(loader, epoch=2)
    again = collect(DeviceLoader(data, 8, shuffle=True, drop_last=True, augment=aug, seed=5, image_size=16), epoch=2)
    for (x1, y1), (x2, y2) in zip(full, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Starting at step 3 gives exactly the tail of the epoch: resume needs only the step counter.
    tail = collect(loader, epoch=2, start=3)
    for (x1, y1), (x2, y2) in zip(full[3:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(full[0][0], collect(loader, epoch=3)[0][0])


def test_rank_slices_make_the_global_batch():
    data = make_set(40)
    kw = dict(shuffle=True, drop_last=True, augment=Augment(2, True, 0.5), seed=7)
    whole = collect(DeviceLoader(data, 8, **kw))
    parts = [collect(DeviceLoader(data, 8, rank=r, world_size=2, **kw)) for r in range(2)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_random_crop_shifts_content():
    images = torch.zeros(64, 1, 6, 6, dtype=torch.uint8)
    images[:, :, 2, 2] = 255
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    positions = {tuple(torch.nonzero(img[0]).flatten().tolist()) for img in out}
    assert len(positions) > 5  # the dot moved to many places
    assert all(len(p) in (0, 2) for p in positions)  # one dot or (shifted off the image) none
    assert out.sum() <= images.sum()


def test_random_flip_mirrors_about_half():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(200, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 70 < flipped < 130
    assert all(row.tolist() in ([[[0, 1, 2, 3]]], [[[3, 2, 1, 0]]]) for row in out)


def test_random_erase_rectangles():
    x = torch.ones(400, 1, 20, 20)
    out = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).float().mean(1)
    touched = erased > 0
    assert 150 < touched.sum() < 250  # about half the images
    assert erased[touched].min() >= 0.01 and erased[touched].max() <= 0.4  # area fraction 0.02..0.33, rounded


def test_mix_seed_separates_parts():
    assert mix_seed(1, 2, 3) != mix_seed(1, 3, 2) and mix_seed(0) == mix_seed(0)
    assert 0 <= mix_seed(2**70, -5) < 2**63
