"""Finding Fashion-MNIST on disk, reading its splits, checking them, carving the validation set."""

import shutil

import numpy as np
import pytest
import torch

from helpers import write_fashion_mnist, write_idx
from resnetlab.data import CLASS_NAMES, DataError, load_fashion_mnist, load_split, resolve_data_dir, split_train_val


def test_class_names():
    assert CLASS_NAMES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )


def test_load_tiny(tiny_data):
    train, test = load_fashion_mnist(tiny_data)
    assert train.images.shape == (600, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(test) == 200
    assert set(train.labels.tolist()) == set(range(10))


def test_resolution_order(tiny_data, tmp_path, monkeypatch):
    other = write_fashion_mnist(tmp_path / "env", n_train=20, n_test=10)
    monkeypatch.setenv("RESNETLAB_DATA", str(other))
    assert resolve_data_dir(tiny_data) == tiny_data  # --data wins
    assert resolve_data_dir() == other  # then $RESNETLAB_DATA
    monkeypatch.delenv("RESNETLAB_DATA")
    import resnetlab.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data"):
        resolve_data_dir()


def test_torchvision_layout_and_raw_files(tmp_path):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    write_fashion_mnist(raw, n_train=30, n_test=10)
    for gz in raw.glob("t10k*.gz"):  # decompressed files work as well
        import gzip

        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert resolve_data_dir(tmp_path / "root") == raw
    train, test = load_fashion_mnist(tmp_path / "root")
    assert len(train) == 30 and len(test) == 10


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist.*apt-get install"):
        resolve_data_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not found in .*empty.*train-images-idx3-ubyte"):
        resolve_data_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        resolve_data_dir(tmp_path / "file")


def test_count_mismatch(tiny_data, tmp_path):
    folder = shutil.copytree(tiny_data, tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(599, np.uint8))
    with pytest.raises(DataError, match="600 images but train-labels-idx1-ubyte.gz holds 599 labels"):
        load_split(folder, "train")


def test_label_out_of_range(tiny_data, tmp_path):
    folder = shutil.copytree(tiny_data, tmp_path / "d")
    labels = np.zeros(200, np.uint8)
    labels[7] = 10
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: label 10 is out of range"):
        load_split(folder, "test")


def test_images_must_be_3d(tiny_data, tmp_path):
    folder = shutil.copytree(tiny_data, tmp_path / "d")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((200, 784), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images \[N, H, W\]"):
        load_split(folder, "test")


def test_split_is_seeded_and_disjoint(tiny_data):
    train, _ = load_fashion_mnist(tiny_data)
    a_train, a_val = split_train_val(train, 100, seed=3)
    b_train, b_val = split_train_val(train, 100, seed=3)
    c_train, c_val = split_train_val(train, 100, seed=4)
    assert len(a_train) == 500 and len(a_val) == 100
    assert torch.equal(a_val.images, b_val.images) and not torch.equal(a_val.images, c_val.images)
    rows = lambda s: {bytes(x.numpy().tobytes()) for x in s.images}  # noqa: E731
    assert not rows(a_train) & rows(a_val)
    with pytest.raises(DataError, match="--val-split 600"):
        split_train_val(train, 600, seed=0)


def test_real_fashion_mnist(real_data):
    train, test = load_fashion_mnist(real_data)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.labels[:3].tolist() == [9, 0, 0]  # the first training images: ankle boot, two T-shirts


def test_a_raw_folder_of_idx_files_is_fashion_mnist_not_a_class_folder(tmp_path, capsys):
    from resnetlab.cli import main
    from resnetlab.data import dataset_kind, open_dataset

    write_fashion_mnist(tmp_path / "root" / "raw", n_train=30, n_test=10)  # torchvision's DIR/raw/ layout
    assert dataset_kind(tmp_path / "root") == "fashion-mnist"
    splits = open_dataset(tmp_path / "root", image_size=None, channels=None, val_split=5, val_fraction=0.2, seed=0)
    assert splits.source == tmp_path / "root" / "raw" and len(splits.train) == 25 and len(splits.test) == 10
    assert main(["show-data", "--data", str(tmp_path / "root"), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert "the first 4 train images" in capsys.readouterr().out
