#!/usr/bin/env bash
# The README's pictures, made by the commands themselves from a checkpoint trained with the cpu
# preset on Fashion-MNIST (default: runs/latest/best.safetensors).
#   bash docs/make_pictures.sh [CKPT]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:-runs/latest/best.safetensors}"
py=.venv/bin/python
# Eight test images, the first of classes 0, 1, 2, 3, 5, 6, 7, 9, written as the PNGs a user would have.
$py - <<'PY'
from pathlib import Path
from PIL import Image
from resnetlab.data.fashion_mnist import load_split, resolve_data_dir

test = load_split(resolve_data_dir(), "test")
out = Path("docs/test-images")
out.mkdir(exist_ok=True)
for k in (0, 1, 2, 3, 5, 6, 7, 9):
    i = int((test.labels == k).nonzero()[0, 0])
    name = test.class_names[k].lower().replace("/", "-").replace(" ", "-")
    Image.fromarray(test.images[i, 0].numpy()).save(out / f"{name}.png")
PY
$py -m resnetlab maps "$ckpt" docs/test-images/sneaker.png --out docs/maps.png
$py -m resnetlab explain "$ckpt" docs/test-images/*.png --out docs/explain
