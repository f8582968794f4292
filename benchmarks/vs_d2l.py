"""The book's training loop beside our `d2l` preset: same network, recipe, data and device.

Baseline: d2l's ``train_ch6`` as the book runs it. The seed's ResNet-18 with Xavier-uniform
init, SGD lr 0.05, batch 256, a torch DataLoader with 4 workers that resizes every image to 96
px with PIL and converts it to a tensor (``transforms.Resize(96)`` + ``ToTensor``), a ``float()``
sync in every step for the running metrics, test accuracy after every epoch, and the book's
examples/sec timer, which runs over training steps only.

Ours: ``resnetlab`` preset ``d2l`` (same network, init, optimizer, batch, size, epochs, no
augmentation or normalisation, test accuracy every epoch), with the data on the device.

Both do the same work: ``--epochs`` passes over the first ``--limit-train`` training images,
and test accuracy on the first ``--limit-test`` test images after every epoch. The full book
run is the default; on a 2-core CPU that takes hours for the baseline, so use the limits there.

    python benchmarks/vs_d2l.py --device cpu --epochs 1 --limit-train 12800 --limit-test 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from resnetlab import d2l_resnet18  # noqa: E402
from resnetlab.data import load_fashion_mnist  # noqa: E402
from resnetlab.engine import fit, from_preset  # noqa: E402


class ResizedFashionMNIST(data.Dataset):
    """Per-sample PIL resize and ToTensor, as the book's torchvision transforms do."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i]).resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
        return x, int(self.labels[i])


def book_accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """d2l.accuracy: the number of correct predictions, as a Python float (a device sync)."""
    return float((y_hat.argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum())


def book_evaluate(net: nn.Module, loader, device) -> float:
    """d2l.evaluate_accuracy_gpu."""
    net.eval()
    correct = total = 0.0
    with torch.no_grad():
        for X, y in loader:
            X, y = X.to(device), y.to(device)
            correct += book_accuracy(net(X), y)
            total += y.numel()
    return correct / total


def book_train(train_set, test_set, epochs: int, device: torch.device) -> dict:
    """d2l.train_ch6 on the seed's network, returning its figures."""
    start = time.perf_counter()
    train_iter = data.DataLoader(train_set, 256, shuffle=True, num_workers=4)
    test_iter = data.DataLoader(test_set, 256, shuffle=False, num_workers=4)
    torch.manual_seed(0)
    net = d2l_resnet18()

    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 - the book's test
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loss = nn.CrossEntropyLoss()
    step_seconds = 0.0
    for _ in range(epochs):
        net.train()
        l_sum = acc_sum = n = 0.0
        for X, y in train_iter:
            t = time.perf_counter()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                l_sum += float(l) * X.shape[0]
                acc_sum += book_accuracy(y_hat, y)
                n += X.shape[0]
            step_seconds += time.perf_counter() - t
        test_acc = book_evaluate(net, test_iter, device)
    wall = time.perf_counter() - start
    return {"wall": wall, "examples_per_sec": n * epochs / step_seconds, "test_acc": test_acc,
            "loss": l_sum / n, "train_acc": acc_sum / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit-train", type=int, default=None, help="first N training images (default: all 60,000)")
    parser.add_argument("--limit-test", type=int, default=None, help="first N test images (default: all 10,000)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--skip-book", action="store_true", help="run only our preset")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe(args.device))
    train, test = load_fashion_mnist(args.data)
    n_train = min(args.limit_train or len(train), len(train))
    n_test = min(args.limit_test or len(test), len(test))
    print(f"work: {args.epochs} epoch(s) on {n_train:,} training images at 96 px, test on {n_test:,} after each\n")

    rows = []
    if not args.skip_book:
        book = book_train(
            ResizedFashionMNIST(train.images[:n_train, 0].numpy(), train.labels[:n_train].numpy(), 96),
            ResizedFashionMNIST(test.images[:n_test, 0].numpy(), test.labels[:n_test].numpy(), 96),
            args.epochs, device,
        )
        rows.append(("book loop (train_ch6)", book))
        print(f"book: loss {book['loss']:.3f}, train acc {book['train_acc']:.3f}, test acc {book['test_acc']:.3f}")
        print(f"book: {book['examples_per_sec']:.1f} examples/sec on {device}\n")
    with tempfile.TemporaryDirectory() as tmp:
        config = from_preset("d2l").replace(
            epochs=args.epochs, limit_train=args.limit_train, limit_test=args.limit_test,
            data=args.data, device=args.device, out=str(Path(tmp) / "run"),
        )
        start = time.perf_counter()
        result = fit(config, log=lambda s: print("ours:", s))
        wall = time.perf_counter() - start
    ours = {"wall": wall, "examples_per_sec": result.examples_per_sec, "test_acc": result.test_acc}
    rows.append(("resnetlab --preset d2l", ours))

    print(f"\n{'':26s} {'wall s':>9s} {'examples/s':>11s} {'test acc':>9s}")
    for name, r in rows:
        print(f"{name:26s} {r['wall']:9.1f} {r['examples_per_sec']:11.1f} {r['test_acc']:9.4f}")
    if len(rows) == 2:
        b, o = rows[0][1], rows[1][1]
        print(f"{'ratio (ours vs book)':26s} {b['wall'] / o['wall']:8.2f}x {o['examples_per_sec'] / b['examples_per_sec']:10.2f}x "
              f"{o['test_acc'] - b['test_acc']:+9.4f}")
        print("(wall: book / ours, higher is better for us; examples/s: ours / book; test acc: ours - book)")


if __name__ == "__main__":
    main()
