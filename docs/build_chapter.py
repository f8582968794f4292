"""Write ``docs/chapter.ipynb``, the notes' ResNet chapter walked cell by cell with resnetlab; ``--run`` renders it.

The notebook's cells are written here, as Python strings, so that a change to them is a plain
diff; ``tests/test_chapter.py`` checks that ``chapter.ipynb`` is what this script writes, and runs
it (with ``RESNETLAB_NOTEBOOK_QUICK=1``, which shrinks every training cell to seconds). Cells
tagged ``notes-output`` print what the notes print, and the test compares them with the notes'
text exactly.

    python docs/build_chapter.py          # write docs/chapter.ipynb (no outputs)
    python docs/build_chapter.py --run    # also execute it in full, writing docs/chapter-full-run.ipynb

The full run trains for minutes per cell on the whole of Fashion-MNIST, in a temporary folder
(its run folders are not kept); its first cell names the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "chapter.ipynb"
RENDERED = HERE / "chapter-full-run.ipynb"
NOTES_OUTPUT = "notes-output"  # the tag of a cell whose output the notes print


def md(text: str):
    """A markdown cell."""
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *tags: str):
    """A code cell, with ``tags`` in its metadata (:data:`NOTES_OUTPUT` for the cells the test compares)."""
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


CELLS = [
    md("""
# The ResNet chapter, runnable with resnetlab

A learner's notes on the ResNet chapter of *Dive into Deep Learning* (cells `In [1]` to `In [6]`)
define a residual block, check three of its output shapes, build the ResNet-18 and print how the
shape changes through it. This notebook follows those cells in order. For each: the cell as the
notes write it, the output the notes print, and then one step further with resnetlab. After the
notes end it goes on as the chapter does: training on Fashion-MNIST with the book's recipe, then a
faster one, then the learner's own `net`, then the chapter's exercises (pre-activation, the
bottleneck, ResNeXt), Grad-CAM, and a photo.

Run it with `pip install -e '.[dev]'` and Jupyter. The training cells use the whole of
Fashion-MNIST (Debian's `dataset-fashion-mnist`, or `$RESNETLAB_DATA`) for a few minutes each on
a 2-core CPU. `chapter-full-run.ipynb` beside this file holds the outputs of such a run, so it can
be read without running anything.
"""),
    code("""
import os

import torch
from torch import nn
from torch.nn import functional as F
from IPython.display import Image, display

import resnetlab

# The test suite sets RESNETLAB_NOTEBOOK_QUICK=1: every training cell then runs for seconds
# (a few hundred images, one epoch). Unset, each trains for minutes on the whole data set.
QUICK = os.environ.get("RESNETLAB_NOTEBOOK_QUICK") == "1"


def budget(minutes, **full):
    \"\"\"A training run's size: `minutes` of this machine's time (0: no limit) and `full`'s fields; seconds when QUICK.\"\"\"
    if QUICK:
        return dict(limit_train=600, limit_test=200, val_split=100, epochs=1, time_budget=0)
    return dict(time_budget=minutes, **full)


def show(fig_path):
    \"\"\"Show a PNG that resnetlab wrote.\"\"\"
    display(Image(filename=str(fig_path)))


# Runs seed their own data order, augmentation and registered models (seed=0); the networks this
# notebook builds itself draw their initial weights from torch's generator, seeded here.
torch.manual_seed(0)
print("resnetlab", resnetlab.__version__, "torch", torch.__version__)
"""),
    md("""
## `In [1]`: the residual block

> 卷积层里的通道数是不是就对应着全连接层里的维度？（好像是这样的）
> *Is a conv layer's number of channels what a fully connected layer's dimension is? (It seems so.)*

The notes' block, exactly as they write it. Their first cell also imports `d2l`; here resnetlab
takes its place (the imports are in the cell above).
"""),
    code("""
class Residual(nn.Module):
    # 参数分别为：输入的通道数、输出的通道数、是否需要1×1的卷积层、如果要1×1的卷积层的话步幅为多大
    def __init__(self, input_channels, num_channels, use_lxlconv=False, strides=1):
        super().__init__()
        # 第一个卷积层
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        # 第二个卷积层
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1) # stride默认=1
        if use_lxlconv:
            # 1×1的卷积层，步长要与第一个卷积层的步长一致，才能保证最后可以相加
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        # 两个批量规范化层
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)
        # 一个激活函数层
        self.relu = nn.ReLU(inplace=True)
        # inplace=True 指原地进行操作，操作完成后覆盖原来的变量，节省内存，但会造成进行梯度回归失败

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        # 进入第一个卷积层，随即进入一个批量规范化层，又随即进入激活函数

        Y = self.bn2(self.conv2(Y))
        # 进入第二个卷积层，随即批量规范化

        if self.conv3:
            X = self.conv3(X)
        Y += X             # 加上原数据
        return F.relu(Y)   # 加完后再次激活并返回
"""),
    md("""
**One step further.** `resnetlab.Residual` is the same block (the notes' `use_lxlconv` spelling
included): the same parameters under the same names, so weights move between the two, and the
same output. `resnetlab.summary` says what a block costs: parameters, and multiply-accumulates
(MACs) for a given input.
"""),
    code("""
theirs = Residual(3, 6, use_lxlconv=True, strides=2)
ours = resnetlab.Residual(3, 6, use_lxlconv=True, strides=2)
print(ours.load_state_dict(theirs.state_dict()))
X = torch.rand(4, 3, 6, 6)
print("same output:", torch.equal(theirs(X), ours(X)))
print(resnetlab.summary(ours, (4, 3, 6, 6)))
"""),
    md("## `In [2]`: input and output of the same shape"),
    code("""
blk = Residual(3,3)  # 实例化一个输入和输出通道皆为3，不用1×1卷积，首个卷积步长为1（说明宽高都没有变化）的块
X = torch.rand(4,3,6,6)
# 产生一个batch_size（批量大小）=4，channels（通道数）=3，h（高）=6，w（宽）=6 的数据输入。
Y = blk(X)
Y.shape
""", NOTES_OUTPUT),
    md("""
**One step further.** Without a 1x1 convolution the shortcut is the identity, which is why input
and output must agree in shape. The block's cost, from resnetlab:
"""),
    code("""
s = resnetlab.summary(resnetlab.Residual(3, 3), (4, 3, 6, 6))
print(f"{s.total_params} parameters, {s.total_macs:,} MACs for a batch of 4 at 6x6")
"""),
    md("## `In [3]`: more output channels, half the height and width"),
    code("""
blk2 = Residual(3, 6, use_lxlconv=True, strides=2)
# 输入通道数为3，输出通道数加倍为6，同时步长加倍为2，使宽高减半。
Y = blk2(X)
Y.shape
""", NOTES_OUTPUT),
    md("""
**One step further.** Here the shortcut needs the 1x1 convolution with the same stride 2: the
sum `Y += X` only works when both branches have 6 channels at 3x3. Without it the block fails:
"""),
    code("""
try:
    Residual(3, 6, strides=2)(X)
except RuntimeError as error:
    print(str(error).splitlines()[0])
"""),
    md("## `In [4]`: more output channels, the same height and width"),
    code("""
blk3 = Residual(3, 6, use_lxlconv=True, strides=1)
Y = blk3(X)
Y.shape
""", NOTES_OUTPUT),
    md("""
### The notes' question: are a conv layer's channels a fully connected layer's dimensions?

Yes, exactly so for a 1x1 convolution: it is one linear map from the input channels to the output
channels, applied at every pixel with the same weights. Numerically, a `Linear(64, 10)` holding a
`Conv2d(64, 10, kernel_size=1)`'s weights, applied at each of 5x5 positions, gives the
convolution's output up to rounding. A 3x3 convolution is a linear map too, from the 9 x 64
values of a neighbourhood to the output channels, so its "input dimension" is channels times
kernel area.
"""),
    code("""
conv = nn.Conv2d(64, 10, kernel_size=1)
fc = nn.Linear(64, 10)
with torch.no_grad():
    fc.weight.copy_(conv.weight.view(10, 64))
    fc.bias.copy_(conv.bias)
X = torch.rand(2, 64, 5, 5)
by_conv = conv(X)
by_fc = fc(X.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the same Linear at each pixel
print(f"largest difference: {(by_conv - by_fc).abs().max().item():.1e}")
conv3 = nn.Conv2d(64, 10, kernel_size=3, padding=1)
print("a 3x3 conv's weights per output channel:", conv3.weight[0].numel(), "= 64 channels x 9 positions")
"""),
    md("## `In [5]`: the ResNet model"),
    code("""
# 首先，预处理部分的块 b1，和 GoogleNet 的 b1 是一样的
# 一个7*7卷积层，一个批量规范化层，一个激活函数，一个3*3最大汇聚层
b1 = nn.Sequential(nn.Conv2d(1,64,kernel_size=7,stride=2,padding=3),
                   nn.BatchNorm2d(64),nn.ReLU(),
                   nn.MaxPool2d(kernel_size=3,stride=2,padding=1))

# 定义大ResNet块
# num_residuals 大ResNet块里有几个块
# first_block=False 是否是第一个大ResNet块
def resnet_block(input_channels, num_channels, num_residuals,  first_block=False):
    blk = []  # 创建一个列表用来存放块
    for i in range(num_residuals):
        if i==0 and not first_block:
            # 如果是第一个大ResNet块，且是该大ResNet块中的是第一个块，那么要在这个小块里对宽高减半
            blk.append(Residual(input_channels, num_channels, use_lxlconv=True,strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk

b2 = nn.Sequential(*resnet_block(64,64,2,first_block=True)) # 第一个大残差块
b3 = nn.Sequential(*resnet_block(64,128,2))
b4 = nn.Sequential(*resnet_block(128,256,2))
b5 = nn.Sequential(*resnet_block(256,512,2))
# 在预处理 b1 部分先进行一个宽高减半，在第一个大残差块那里不进行减半，后面的每一个大ResNet块的第一块都进行减半

# 最后，与 GoogleNet 一样，加入一个全局平均汇聚层和全连接层
net = nn.Sequential(b1,b2,b3,b4,b5,nn.AdaptiveAvgPool2d((1,1)), nn.Flatten(), nn.Linear(512,10))
# net = nn.Sequential(b1,b2,b3,b4,b5,nn.Flatten(),nn.Linear(512,10))
"""),
    md("""
**One step further.** `resnetlab.d2l_resnet18()` is this network: the notes' `net` loads into it
with every key matching. At the book's 96 px it has 11.2 million parameters and needs about a
third of a billion multiply-accumulates per image.
"""),
    code("""
print(resnetlab.d2l_resnet18().load_state_dict(net.state_dict()))
s = resnetlab.summary(net, (1, 1, 96, 96))
print(f"{s.total_params:,} parameters, {s.total_macs / 1e9:.2f} GMACs per 96x96 image")
"""),
    md("""
### Without the global average pooling

The notes suggest trying the commented-out line, the network without `AdaptiveAvgPool2d`. Then
`Flatten` gives 512 x h x w values, where h x w is b5's map, and `Linear(512, 10)` only fits when
that map is 1x1: inputs of at most 32 px (b1 halves twice and b3 to b5 halve once each, so
32 / 32 = 1). At 96 px b5's map is 3x3 (4,608 values), at the notes' 256 px 8x8 (32,768). The
pooling averages each channel's map to one number whatever its size, so the head fits every
input size.
"""),
    code("""
no_pool = nn.Sequential(b1, b2, b3, b4, b5, nn.Flatten(), nn.Linear(512, 10)).eval()
for side in (256, 96, 32, 28):
    try:
        with torch.no_grad():
            print(f"{side:3d} px -> {tuple(no_pool(torch.rand(1, 1, side, side)).shape)}")
    except RuntimeError as error:
        print(f"{side:3d} px -> {str(error).splitlines()[0]}")
net.train();
"""),
    md("## `In [6]`: how the shape changes through the network"),
    code("""
X = torch.rand(size=(1,1,256,256))
for layer in net:
    X = layer(X)
    print(layer.__class__.__name__, 'output shape:\\t', X.shape)
""", NOTES_OUTPUT),
    md("""
**One step further.** What those shapes hold: a Fashion-MNIST test image at the book's 96 px,
and the 8 strongest channels of each stage's output (for this untrained net; the same picture
for a trained model follows below). b2 keeps b1's 64 channels at 24x24; from b3 on, each stage
halves the side and doubles the channels, down to b5's 512 maps of 3x3.
"""),
    code("""
import tempfile
from pathlib import Path

from resnetlab.data.fashion_mnist import load_split, resolve_data_dir
from resnetlab.data.loader import to_model_input
from resnetlab.inference.explain import as_seen, stage_outputs
from resnetlab.util.pictures import save_stage_maps

test = load_split(resolve_data_dir(), "test")
pictures = Path(tempfile.mkdtemp())
image = test.images[0]


def stage_maps(model, image, side, title):
    x = to_model_input(image[None], side)
    outputs = stage_outputs(model, x)
    save_stage_maps(pictures / "maps.png", as_seen([image], side)[0], [(o.name, o.line, o.output[0]) for o in outputs],
                    title=title)
    show(pictures / "maps.png")


stage_maps(net, image, 96, "the notes' net, untrained, at 96 px")
"""),
    md("""
## Training: the book's recipe

The chapter then trains this network on Fashion-MNIST with `d2l.train_ch6`: Xavier-initialised
weights, plain SGD at lr 0.05, batch 256, images resized to 96 px, 10 epochs.
`preset="d2l"` is that recipe (here, in a notebook, with the book's live figure). On a 2-core CPU
its 10 epochs over 60,000 images at 96 px take hours, so this cell runs it on 6,000 images for 2
epochs; the last line estimates the whole.
"""),
    code("""
book = resnetlab.train(preset="d2l", **budget(0, limit_train=6000, limit_test=2000, epochs=2))
print(f"test accuracy {book.test_acc:.3f}; the book's 10 epochs of 60,000 images would take "
      f"{600_000 / book.examples_per_sec / 3600:.1f} h at this speed")
"""),
    md("""
## The faster recipe

`preset="cpu"` is resnetlab's recipe for a CPU: the same network at Fashion-MNIST's own 28 px
(12 times less work per image than 96 px), batch 512, SGD with Nesterov momentum at lr 0.2,
one-cycle schedule, label smoothing, flips and the gradient's norm clipped at 2, chosen on a
validation split. `resnetlab train`
gives it 10 minutes; this cell gives it 3, on the 55,000 training images (5,000 are held out to
validate on).
"""),
    code("""
fast = resnetlab.train(preset="cpu", **budget(3))
print(f"test accuracy {fast.test_acc:.3f} after {fast.total_seconds / 60:.1f} min")
"""),
    md("The trained model's stage maps for the same test image, at its 28 px:"),
    code("""
trained = resnetlab.load(fast.run_dir / "best.safetensors")
stage_maps(trained.model, image, 28, "the trained d2l_resnet18 at 28 px")
"""),
    md("""
## The learner's own `net`

`resnetlab.train(model=net)` takes any `nn.Module`, as `d2l.train_ch6(net, ...)` does: the same
loop, preset, budget, live figure and run folder. It trains a copy, and afterwards `net` holds the
best weights. The weights file says it holds a custom `Sequential`; `resnetlab.load(path,
model=net)` reads it back into a network built the same way. The path is the registered
model's: a test checks that `d2l_resnet18()` built under the run's seed and passed as `model`
trains bit for bit as `model="d2l_resnet18"` does (fp32, deterministic, no time budget). Here
`net` starts from its own random weights.
"""),
    code("""
mine = resnetlab.train(model=net, preset="cpu", **budget(3))
clf = resnetlab.load(mine.run_dir / "best.safetensors", model=net)
print(clf.header.model, f"test accuracy {mine.test_acc:.3f} (the registered d2l_resnet18 above: {fast.test_acc:.3f})")
for prediction, label in zip(clf.predict(test.images[:6]), test.labels[:6].tolist()):
    print(f"{prediction.label:12s} {prediction.prob:.2f}   (truly {test.class_names[label]})")
"""),
    md("""
The notes' `net` and the registered `d2l_resnet18` are the same network drawn from different random
weights, so under the same recipe and budget they should end within about a point of each other,
and the line above prints both. They did not always: the `cpu` recipe used to sit at the edge of
stability, and in one full run of this notebook `net`'s loss jumped from 1.07 to 2.13 in its
second epoch and it ended at 0.806 against 0.912. The recipe now clips the gradient's norm (at 2
for its batch of 512), which takes the edge away; `benchmarks/recipes.py --notes` trains both
networks over several seeds, and the README quotes what it measured.
"""),
    md("""
## Exercises

### Pre-activation: batch norm, activation, convolution

The second ResNet paper (He et al. 2016, *Identity Mappings in Deep Residual Networks*) moves
batch norm and ReLU in front of each convolution and leaves the sum unactivated, so that the
shortcut carries the identity through the whole network. `Residual(..., preact=True)` (or
`PreActResidual`) is that block with the notes' arguments, and `d2l_preact_resnet18` the notes'
network built of it, with the final batch norm and ReLU before the pooling. The same shapes:
"""),
    code("""
X = torch.rand(4, 3, 6, 6)
print(resnetlab.Residual(3, 3, preact=True)(X).shape, resnetlab.PreActResidual(3, 6, use_lxlconv=True, strides=2)(X).shape)
preact_net = resnetlab.create_model("d2l_preact_resnet18")
print(f"{resnetlab.summary(preact_net, (1, 1, 96, 96)).total_params:,} parameters "
      f"(the original: {resnetlab.summary(net, (1, 1, 96, 96)).total_params:,})")
"""),
    md("Trained side by side with the original under the same recipe, budget and seed (the original is the `fast` run above):"),
    code("""
preact = resnetlab.train(model="d2l_preact_resnet18", preset="cpu", **budget(3))
print(f"{'':22s} {'epochs':>6s} {'best val':>8s} {'test':>6s}")
for name, r in (("original (post-act)", fast), ("pre-activation", preact)):
    print(f"{name:22s} {len(r.history):6d} {r.best_val_acc:8.3f} {r.test_acc:6.3f}")

from resnetlab.util.pictures import figure, save_figure

fig = figure(6.5, 2.6)
for i, key in enumerate(("train_loss", "val_acc")):
    ax = fig.add_subplot(1, 2, i + 1)
    for name, r in (("original", fast), ("pre-activation", preact)):
        ax.plot([row["epoch"] for row in r.history], [row[key] for row in r.history], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_title(key.replace("_", " "), fontsize=9)
    ax.legend(fontsize=8)
save_figure(fig, pictures / "preact.png")
show(pictures / "preact.png")
"""),
    md("""
### The bottleneck block

For ResNet-50 and deeper the paper replaces the two 3x3 convolutions by 1x1, 3x3, 1x1: the first
1x1 reduces the channels four times, the 3x3 works on the reduced ones, the last 1x1 restores them.
At 256 channels it has about a seventeenth of the parameters and work of two plain 3x3 convolutions.
Our bottleneck nets are torchvision's "v1.5", with the stride on the 3x3 convolution rather than
the first 1x1, which costs a little more than the paper's Table 1 says (ResNet-50: 4.1 against
3.8 billion multiply-adds) and is slightly more accurate:
"""),
    code("""
X = torch.rand(1, 256, 56, 56)
bottleneck = resnetlab.Bottleneck(256, 64)
plain = resnetlab.BasicBlock(256, 256)
print(bottleneck(X).shape, plain(X).shape)
for name, block in (("bottleneck 256-64-64-256", bottleneck), ("two 3x3 convs at 256", plain)):
    s = resnetlab.summary(block, (1, 256, 56, 56))
    print(f"{name:26s} {s.total_params:>9,} parameters {s.total_macs / 1e6:8.0f} M MACs")
print("The paper's Table 1 gives 1.8, 3.6, 3.8, 7.6 and 11.3 billion FLOPs (multiply-adds) at 224 px:")
for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    s = resnetlab.summary(resnetlab.create_model(name), (1, 3, 224, 224))
    print(f"  {name:10s} {s.total_macs / 1e9:5.2f} GMACs, {s.total_params / 1e6:5.1f} M parameters")
"""),
    md("""
### ResNeXt

The chapter's newer edition adds the ResNeXt block: a bottleneck whose 3x3 convolution is split
into groups. In the book's API `ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv, strides)`
(lazy input channels); note that its `groups` is the width of a group: the convolution has
`bot_channels // groups` groups. The book's example keeps the shape:
"""),
    code("""
blk = resnetlab.ResNeXtBlock(32, 16, 1)
X = torch.rand(4, 32, 96, 96)
print(blk(X).shape, "groups of the 3x3 conv:", blk.conv2.groups)
print(f"{sum(p.numel() for p in blk.parameters()):,} parameters "
      f"(a plain Residual(32, 32): {sum(p.numel() for p in resnetlab.Residual(32, 32).parameters()):,})")
"""),
    md("""
## Where the evidence lies: Grad-CAM

`clf.explain(images)` gives Grad-CAM heatmaps: where the evidence for the predicted class lay, at
the last stage whose maps are at least 4x4 (b3 at 28 px).
"""),
    code("""
from resnetlab.inference.explain import as_seen
from resnetlab.util.pictures import save_explanation_sheet

images = test.images[:12]
heatmaps = trained.explain(images)
predictions = trained.predict(images)
titles = [f"{p.label} {p.prob:.2f}" for p in predictions]
colors = ["green" if p.label == test.class_names[y] else "red" for p, y in zip(predictions, test.labels[:12].tolist())]
save_explanation_sheet(pictures / "cam.png", as_seen(images, trained.image_size), heatmaps, titles, title_colors=colors)
show(pictures / "cam.png")
"""),
    md("""
## A photo

Fashion-MNIST's images are light objects on a black background, centred; a phone photo is the
opposite. Here a test image is made into one: inverted, off centre on a larger light, textured
background. The weights' header keeps the training images' intensity statistics, so resnetlab
says when an image's background is unlike theirs, and `invert=True, center=True` (`--invert
--center` on the command line) turn it back into what the model knows: light on dark, the object
filling the square.
"""),
    code("""
import warnings

import numpy as np

rng = np.random.default_rng(0)
shirt = test.images[1]
photo = torch.from_numpy(rng.integers(170, 230, size=(1, 120, 120), dtype=np.uint8))  # light, textured paper
photo[:, 10:66, 50:106] = 255 - torch.nn.functional.interpolate(shirt[None].float(), size=56, mode="bilinear")[0].round().to(torch.uint8)
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    before = trained.predict([photo])[0]
print("warning:", said[0].message if said else None)
after = trained.predict([photo], invert=True, center=True)[0]
print(f"as taken: {before.label} {before.prob:.2f}; with invert and center: {after.label} {after.prob:.2f}; "
      f"truly {test.class_names[int(test.labels[1])]}")

from resnetlab.util.pictures import figure, save_figure

fig = figure(7.5, 2.6)
panels = [("the photo", photo[0].float()), ("the model's input, as taken", trained.prepare([photo])[0, 0]),
          ("with invert and center", trained.prepare([photo], invert=True, center=True)[0, 0]),
          ("the test image", trained.prepare([shirt])[0, 0])]
for i, (title, pixels) in enumerate(panels):
    ax = fig.add_subplot(1, 4, i + 1)
    ax.imshow(pixels, cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
save_figure(fig, pictures / "photo.png")
show(pictures / "photo.png")
"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = new_notebook(cells=CELLS)
    for number, cell in enumerate(nb.cells):
        cell.id = f"cell-{number:02d}"  # fixed ids: the same cells give the same file
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, folder: Path, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run every cell in a kernel whose working folder is ``folder`` (the run folders go there)."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def machine() -> str:
    """The CPU's model name and core count (lscpu), for the rendered copy's first cell."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
        flags = next((line for line in lines if line.startswith("Flags")), "")
        kind = "AVX-512" if "avx512f" in flags else "AVX2"
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name, kind = platform.processor() or "unknown CPU", "?"
    return f"{name} ({kind}), {os.cpu_count()} cores"


def main() -> int:
    """Write the notebook; with ``--run``, execute it in full and write the rendered copy too."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="also execute the notebook in full and write the rendered copy")
    args = parser.parse_args()
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    if args.run:
        nb = build()
        when = datetime.date.today().isoformat()
        first = md(f"*Rendered copy: every cell run in full on {machine()}, torch {_torch()}, {when}, "
                   f"with `python docs/build_chapter.py --run`. The times and accuracies are that machine's.*")
        first.id = "rendered"
        nb.cells.insert(0, first)
        with tempfile.TemporaryDirectory() as folder:
            execute(nb, Path(folder))
        nbformat.write(nb, RENDERED)
        print(f"wrote {RENDERED}")
    return 0


def _torch() -> str:
    import torch

    return str(torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
