"""Write ``docs/chapter.ipynb`` (English) and ``docs/chapter.zh-CN.ipynb`` (中文), the notes' ResNet chapter with resnetlab; ``--run`` renders one.

The notebooks' cells are written here, as Python strings, so that a change to them is a plain
diff. Every markdown cell carries two texts, ``md(en, zh)``: English first, then Simplified Chinese
(in the terms of the Chinese edition, 动手学深度学习). The code cells are written once and are the
same in both notebooks, their English comments and printed strings included; so the two notebooks
have the same cells in the same places, and only their markdown differs.
``tests/test_chapter.py`` checks that both notebooks are what this script writes and that their
code cells agree, and runs each (with ``RESNETLAB_NOTEBOOK_QUICK=1``, which shrinks every training
cell to seconds). Cells tagged ``notes-output`` print what the notes print, and the test compares
them with the notes' text exactly.

    python docs/build_chapter.py                      # write both notebooks (no outputs)
    python docs/build_chapter.py --run                # also execute the English one in full: docs/chapter-full-run.ipynb
    python docs/build_chapter.py --run --lang zh-CN   # ... the Chinese one: docs/chapter-full-run.zh-CN.ipynb

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
from typing import NamedTuple

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
LANGS = ("en", "zh-CN")  # English first: the default, and the language the notes' trace and the code speak
NOTEBOOKS = {"en": HERE / "chapter.ipynb", "zh-CN": HERE / "chapter.zh-CN.ipynb"}
RENDERED_COPIES = {"en": HERE / "chapter-full-run.ipynb", "zh-CN": HERE / "chapter-full-run.zh-CN.ipynb"}
NOTEBOOK = NOTEBOOKS["en"]
RENDERED = RENDERED_COPIES["en"]
NOTES_OUTPUT = "notes-output"  # the tag of a cell whose output the notes print


class Markdown(NamedTuple):
    """A markdown cell's two texts."""

    en: str
    zh: str

    def cell(self, lang: str) -> nbformat.NotebookNode:
        return new_markdown_cell((self.en if lang == "en" else self.zh).strip("\n"))


class Code(NamedTuple):
    """A code cell's source and tags, the same in every language."""

    text: str
    tags: tuple[str, ...]

    def cell(self, lang: str) -> nbformat.NotebookNode:
        cell = new_code_cell(self.text.strip("\n"))
        if self.tags:
            cell.metadata["tags"] = list(self.tags)
        return cell


def md(en: str, zh: str) -> Markdown:
    """A markdown cell: its English text, then its Simplified Chinese one.

    The Chinese text keeps each paragraph on one line: a line break inside a paragraph renders as a
    space, which Chinese text has none of.
    """
    return Markdown(en, zh)


def code(text: str, *tags: str) -> Code:
    """A code cell, shared by both notebooks, with ``tags`` in its metadata (:data:`NOTES_OUTPUT` for the cells the test compares)."""
    return Code(text, tags)


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
""", """
# 用 resnetlab 运行残差网络（ResNet）一章

一位学习者读《动手学深度学习》残差网络（ResNet）一节时记下的笔记（单元格 `In [1]` 到 `In [6]`）定义了一个残差块，检查了它的三种输出形状，搭建了 ResNet-18，并打印出形状在网络中如何变化。本笔记本按顺序跟随这些单元格，每一个都分三步：笔记原样写下的单元格，笔记打印的输出，然后用 resnetlab 再往前走一步。笔记结束后，本笔记本沿着该章继续：先用书中的训练方法在 Fashion-MNIST 上训练，再换一个更快的方法，然后训练学习者自己的 `net`，接着是该章的练习（预激活、瓶颈（bottleneck）块、ResNeXt），最后是 Grad-CAM 和一张照片。

本笔记本的代码单元格与英文版 `chapter.ipynb` 完全相同：笔记中的中文注释原样保留，resnetlab 部分的注释和打印出的文字是英文的，正文在需要的地方解释它们的意思。

运行它需要 `pip install -e '.[dev]'` 和 Jupyter。训练单元格使用完整的 Fashion-MNIST（Debian 的 `dataset-fashion-mnist` 软件包，或 `$RESNETLAB_DATA` 指定的目录），在 2 核 CPU 上每个要训练几分钟。本文件旁边的 `chapter-full-run.ipynb`（英文版）保存了这样一次运行的全部输出，不运行任何代码也能阅读。
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
""", """
## `In [1]`：残差块

> 卷积层里的通道数是不是就对应着全连接层里的维度？（好像是这样的）

下面是笔记中的残差块，与笔记原文一字不差（这个问题在 `In [4]` 之后回答）。笔记的第一个单元格还导入了 `d2l`；这里由 resnetlab 代替它（导入语句在上一个单元格中）。
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
""", """
**再往前一步。** `resnetlab.Residual` 就是同一个块（连笔记中 `use_lxlconv` 的拼写也一样）：同样的参数、同样的名字，所以权重可以在两者之间互相载入，输出也相同（下面打印的 `<All keys matched successfully>` 意为“所有键都匹配成功”，`same output: True` 意为“输出相同”）。`resnetlab.summary` 给出一个块的开销：参数量，以及对给定输入所需的乘加运算次数（multiply-accumulate，MACs）。
"""),
    code("""
theirs = Residual(3, 6, use_lxlconv=True, strides=2)
ours = resnetlab.Residual(3, 6, use_lxlconv=True, strides=2)
print(ours.load_state_dict(theirs.state_dict()))
X = torch.rand(4, 3, 6, 6)
print("same output:", torch.equal(theirs(X), ours(X)))
print(resnetlab.summary(ours, (4, 3, 6, 6)))
"""),
    md("## `In [2]`: input and output of the same shape", "## `In [2]`：输入和输出形状一致"),
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
""", """
**再往前一步。** 没有 1×1 卷积层时，跨层数据通路（shortcut）就是恒等映射，所以输入和输出的形状必须一致。这个块的开销，由 resnetlab 给出（参数个数，以及批量大小为 4、输入 6×6 时的乘加运算次数）：
"""),
    code("""
s = resnetlab.summary(resnetlab.Residual(3, 3), (4, 3, 6, 6))
print(f"{s.total_params} parameters, {s.total_macs:,} MACs for a batch of 4 at 6x6")
"""),
    md("## `In [3]`: more output channels, half the height and width", "## `In [3]`：增加输出通道数的同时，减半输出的高和宽"),
    code("""
blk2 = Residual(3, 6, use_lxlconv=True, strides=2)
# 输入通道数为3，输出通道数加倍为6，同时步长加倍为2，使宽高减半。
Y = blk2(X)
Y.shape
""", NOTES_OUTPUT),
    md("""
**One step further.** Here the shortcut needs the 1x1 convolution with the same stride 2: the
sum `Y += X` only works when both branches have 6 channels at 3x3. Without it the block fails:
""", """
**再往前一步。** 这里跨层数据通路需要那个步幅同样为 2 的 1×1 卷积层：只有两条分支都是 6 个通道、3×3 大小时，加法 `Y += X` 才能成立。去掉它，这个块就会出错（打印的报错意为：张量 a 在维度 3（宽）上的大小 3 与张量 b 的 6 不一致）：
"""),
    code("""
try:
    Residual(3, 6, strides=2)(X)
except RuntimeError as error:
    print(str(error).splitlines()[0])
"""),
    md("## `In [4]`: more output channels, the same height and width", "## `In [4]`：只增加输出通道数，不改变高和宽"),
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
""", """
### 笔记的问题：卷积层里的通道数是不是就对应着全连接层里的维度？

是的，笔记猜得对，而且对 1×1 卷积层来说恰好如此：它就是一个从输入通道到输出通道的线性映射，在每个像素位置上用同一组权重各算一次。用数值来验证：把 `Conv2d(64, 10, kernel_size=1)` 的权重放进一个 `Linear(64, 10)`，在 5×5 的每个位置上分别应用，得到的结果与卷积的输出只差舍入误差（下面打印的 `largest difference` 就是两者的最大差值）。3×3 卷积层也是线性映射，它把一个邻域里的 9 × 64 个值映射到输出通道，所以它的“输入维度”是通道数乘以卷积核的面积（最后一行打印的正是：每个输出通道有 576 个权重 = 64 个通道 × 9 个位置）。
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
    md("## `In [5]`: the ResNet model", "## `In [5]`：ResNet模型"),
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
""", """
**再往前一步。** `resnetlab.d2l_resnet18()` 就是这个网络：笔记中 `net` 的参数可以载入它，每个键都对得上（`<All keys matched successfully>`）。在书中使用的 96 px 输入下，它有 1120 万个参数，每张图像大约需要 3.2 亿次乘加运算（下面打印的 `GMACs` 是十亿次乘加）。
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
""", """
### 去掉全局平均汇聚层

> 全局平均汇聚层的作用是在不改变通道数的情况下，将宽高都变为1，这样才能接入最后的全连接层。
>
> 不太确定的话可以用上面cell最下面注释掉的那行代码来验证一下

笔记建议试一试被注释掉的那一行，也就是没有 `AdaptiveAvgPool2d` 的网络。这时 `Flatten` 得到 512 × h × w 个值，其中 h × w 是 b5 输出的特征映射的大小，而 `Linear(512, 10)` 只有在它是 1×1 时才接得上：也就是输入不超过 32 px（b1 把高和宽减半两次，b3 到 b5 各减半一次，32 / 32 = 1）。在 96 px 下 b5 的特征映射是 3×3（4,608 个值），在笔记用的 256 px 下是 8×8（32,768 个值）。所以笔记说得没错：全局平均汇聚层把每个通道的特征映射不论大小都平均成一个数，因此最后的全连接层对任何输入大小都接得上。下面的单元格逐一验证：接得上的打印输出形状，接不上的打印 PyTorch 的报错（`mat1 and mat2 shapes cannot be multiplied` 意为“两个矩阵的形状无法相乘”）。
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
    md("## `In [6]`: how the shape changes through the network", "## `In [6]`：观察ResNet中不同模块的输入形状是如何变化的"),
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
""", """
**再往前一步。** 这些形状里装的是什么：一张 Fashion-MNIST 测试图像（按书中的 96 px），以及每个模块输出中最强的 8 个通道（这里是未经训练的网络；训练好的模型的同样的图在后面）。b2 保持 b1 的 64 个通道、24×24 大小；从 b3 开始，每个模块把边长减半、通道数翻倍，直到 b5 的 512 个 3×3 特征映射。
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
""", """
## 训练：书中的方法

该章接着用 `d2l.train_ch6` 在 Fashion-MNIST 上训练这个网络：用 Xavier 初始化权重，学习率为 0.05 的普通小批量随机梯度下降（SGD），批量大小 256，图像放大到 96 px，训练 10 个迭代周期。`preset="d2l"` 就是这套训练方法（在笔记本中还会像书里一样画出实时更新的训练曲线）。在 2 核 CPU 上，用 96 px 的 60,000 张图像训练 10 个迭代周期要好几个小时，所以这个单元格只用 6,000 张图像训练 2 个迭代周期；最后一行按这个速度估计跑完整个训练需要多少小时。

训练时每个迭代周期打印一行：`lr` 是学习率，`loss` 是训练损失，`train acc` 是训练集准确率，`test acc` 是测试集准确率（书中的方法不划分验证集，每个迭代周期都在测试集上评估），`img/s` 是每秒处理的图像数。最后打印的 `test accuracy` 是测试集准确率。
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
""", """
## 更快的训练方法

`preset="cpu"` 是 resnetlab 为 CPU 准备的训练方法：同一个网络，但使用 Fashion-MNIST 原本的 28 px 图像（每张图像的计算量比 96 px 少 12 倍），批量大小 512，学习率为 0.2、带 Nesterov 动量的随机梯度下降，单周期（one-cycle）学习率调度，标签平滑（label smoothing），翻转图像的数据增广，以及把梯度的范数裁剪到 2（梯度裁剪）；这些选择都是在验证集上做出的。`resnetlab train` 给它 10 分钟；这个单元格给它 3 分钟，用 55,000 张训练图像（另外 5,000 张留作验证集）。

`3 min budget` 开头的行是时间预算的计划：按测得的速度，3 分钟能训练多少个迭代周期（`epochs`）、多少步（`steps`）；每个迭代周期开始时，它会按上一个迭代周期实际花的时间重新规划（`re-planned`）。`val acc` 是验证集准确率；测试集只在最后评估一次，即最后一行的 `test acc`。
"""),
    code("""
fast = resnetlab.train(preset="cpu", **budget(3))
print(f"test accuracy {fast.test_acc:.3f} after {fast.total_seconds / 60:.1f} min")
"""),
    md("The trained model's stage maps for the same test image, at its 28 px:", "训练好的模型对同一张测试图像的各模块特征映射（按它的 28 px）："),
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
""", """
## 学习者自己的 `net`

`resnetlab.train(model=net)` 和 `d2l.train_ch6(net, ...)` 一样，接受任何 `nn.Module`：训练循环、预设（preset）、时间预算、实时训练曲线和运行文件夹都相同。它训练的是一个副本，训练结束后 `net` 中存放的是最好的权重。权重文件会注明其中是一个自定义的 `Sequential`（下面打印的 `custom:Sequential`）；`resnetlab.load(path, model=net)` 把它读回一个以同样方式搭建的网络。这与注册模型走的是同一条路径：有一个测试检查，按本次运行的随机种子构建的 `d2l_resnet18()` 作为 `model` 传入时，与 `model="d2l_resnet18"` 的训练结果逐位相同（fp32、确定性计算、不设时间预算）。这里的 `net` 从它自己的随机权重开始训练。

最后几行是前 6 张测试图像的预测类别和概率，括号里 `truly` 后面是真实类别。
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
""", """
笔记中的 `net` 与注册的 `d2l_resnet18` 是同一个网络，只是随机初始权重不同，所以在相同的训练方法和时间预算下，两者最终的准确率应当相差不超过大约一个百分点；上面那一行把两者都打印了出来（括号里是上面注册的 `d2l_resnet18` 的测试集准确率）。以前并不总是这样：`cpu` 训练方法曾经处在稳定的边缘，在本笔记本的一次完整运行中，`net` 的损失在第二个迭代周期从 1.07 跳到 2.13，最终只有 0.806，而 `d2l_resnet18` 是 0.912。现在这套方法会裁剪梯度的范数（批量大小为 512 时裁剪到 2），消除了这种不稳定；`benchmarks/recipes.py --notes` 在多个随机种子上训练这两个网络，README 中引用了测得的结果。
"""),
    md("""
## Exercises

### Pre-activation: batch norm, activation, convolution

The second ResNet paper (He et al. 2016, *Identity Mappings in Deep Residual Networks*) moves
batch norm and ReLU in front of each convolution and leaves the sum unactivated, so that the
shortcut carries the identity through the whole network. `Residual(..., preact=True)` (or
`PreActResidual`) is that block with the notes' arguments, and `d2l_preact_resnet18` the notes'
network built of it, with the final batch norm and ReLU before the pooling. The same shapes:
""", """
## 练习

### 预激活：批量规范化层、激活层和卷积层

ResNet 的第二篇论文（He et al. 2016，*Identity Mappings in Deep Residual Networks*）把批量规范化和 ReLU 移到每个卷积层之前，并且相加之后不再激活，这样跨层数据通路就能把恒等映射贯穿整个网络。`Residual(..., preact=True)`（或 `PreActResidual`）就是这种块，参数与笔记中的相同；`d2l_preact_resnet18` 是用它搭建的笔记中的网络，在汇聚层之前还有最后一个批量规范化层和 ReLU。形状相同（第二行括号里是原网络的参数量）：
"""),
    code("""
X = torch.rand(4, 3, 6, 6)
print(resnetlab.Residual(3, 3, preact=True)(X).shape, resnetlab.PreActResidual(3, 6, use_lxlconv=True, strides=2)(X).shape)
preact_net = resnetlab.create_model("d2l_preact_resnet18")
print(f"{resnetlab.summary(preact_net, (1, 1, 96, 96)).total_params:,} parameters "
      f"(the original: {resnetlab.summary(net, (1, 1, 96, 96)).total_params:,})")
"""),
    md("Trained side by side with the original under the same recipe, budget and seed (the original is the `fast` run above):", "在相同的训练方法、时间预算和随机种子下与原网络并排训练（原网络就是上面 `fast` 那次运行）。表中各列依次是迭代周期数（`epochs`）、最佳验证集准确率（`best val`）和测试集准确率（`test`）；图中是训练损失（`train loss`）和验证集准确率（`val acc`）随迭代周期的变化："),
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
""", """
### 瓶颈（bottleneck）块

对于 ResNet-50 及更深的网络，论文把两个 3×3 卷积层换成 1×1、3×3、1×1 三个卷积层：第一个 1×1 卷积层把通道数减少到四分之一，3×3 卷积层在减少后的通道上计算，最后一个 1×1 卷积层再把通道数恢复。在 256 个通道时，它的参数量和计算量大约只有两个普通 3×3 卷积层的十七分之一。我们的瓶颈网络采用 torchvision 的“v1.5”版本，把步幅放在 3×3 卷积层上而不是第一个 1×1 卷积层上，因此计算量比论文表 1 给出的略多（ResNet-50：41 亿次乘加，而论文为 38 亿次），准确率也略高。

下面先比较瓶颈块与两个 3×3 卷积层的参数量和乘加运算量（`M MACs`：百万次乘加），再列出论文表 1 中 5 个网络在 224 px 下的计算量（`GMACs`：十亿次乘加）和参数量（`M parameters`：百万个参数）：
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
""", """
### ResNeXt

该章的新版本加入了 ResNeXt 块：一种瓶颈块，其中的 3×3 卷积层被分成若干组。按书中的接口是 `ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv, strides)`（输入通道数采用延后初始化）；注意其中的 `groups` 是每一组的宽度：这个卷积层实际有 `bot_channels // groups` 个组。书中的例子保持形状不变（下面打印的 `groups of the 3x3 conv` 是 3×3 卷积层的组数）：
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
""", """
## 证据在哪里：Grad-CAM

`clf.explain(images)` 给出 Grad-CAM 热力图：显示支持预测类别的证据位于图像的哪些位置，取自特征映射至少为 4×4 的最后一个模块（28 px 输入时是 b3）。每张图像上方是预测的类别和概率，绿色表示预测正确，红色表示预测错误。
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
""", """
## 一张照片

Fashion-MNIST 的图像都是黑色背景上居中的浅色物体；用手机拍的照片正好相反。这里把一张测试图像做成这样一张照片：颜色反转，不居中地放在一块更大的、浅色且带纹理的背景上。权重文件的头部保存了训练图像的亮度统计信息，所以当一张图像的背景与训练图像不同时，resnetlab 会给出提示（下面打印的 warning 意为：“这张图像的背景是浅色的，与训练图像（深色）不同；试试 invert=True”）；`invert=True, center=True`（命令行上是 `--invert --center`）把它变回模型熟悉的样子：深色背景上的浅色物体，并且物体占满整个方框。

第二行的 `as taken` 是照片直接预测的结果，`with invert and center` 是反转并居中之后的结果，`truly` 后面是真实类别。
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


def build(lang: str = "en") -> nbformat.NotebookNode:
    """The notebook in ``lang`` (one of :data:`LANGS`), without outputs."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}: one of {', '.join(LANGS)}")
    nb = new_notebook(cells=[spec.cell(lang) for spec in CELLS])
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


def rendered_note(lang: str, machine: str, torch: str, when: str) -> str:
    """The rendered copy's first cell: where, when and how it was run."""
    if lang == "en":
        return (f"*Rendered copy: every cell run in full on {machine}, torch {torch}, {when}, "
                f"with `python docs/build_chapter.py --run`. The times and accuracies are that machine's.*")
    return (f"*完整运行副本：每个单元格都在 {machine} 上完整运行过（torch {torch}，{when}），"
            f"命令为 `python docs/build_chapter.py --run --lang {lang}`。其中的时间和准确率都是那台机器上的结果。*")


def main() -> int:
    """Write both notebooks; with ``--run``, execute the one in ``--lang`` in full and write its rendered copy too."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="also execute a notebook in full and write its rendered copy")
    parser.add_argument("--lang", choices=LANGS, default="en",
                        help="the notebook that --run executes (default: en); both are always written")
    args = parser.parse_args()
    for lang in LANGS:
        nbformat.write(build(lang), NOTEBOOKS[lang])
        print(f"wrote {NOTEBOOKS[lang]}")
    if args.run:
        nb = build(args.lang)
        when = datetime.date.today().isoformat()
        first = new_markdown_cell(rendered_note(args.lang, machine(), _torch(), when))
        first.id = "rendered"
        nb.cells.insert(0, first)
        with tempfile.TemporaryDirectory() as folder:
            execute(nb, Path(folder))
        nbformat.write(nb, RENDERED_COPIES[args.lang])
        print(f"wrote {RENDERED_COPIES[args.lang]}")
    return 0


def _torch() -> str:
    import torch

    return str(torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
