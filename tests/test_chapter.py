"""docs/chapter.ipynb and its Chinese edition docs/chapter.zh-CN.ipynb: what docs/build_chapter.py writes, the same
code cells in the same places, and each runs top to bottom, printing what the notes print."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from helpers import SEED_TRACE

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The notebook the builder writes for each language (English first, as the builder's LANGS).
NOTEBOOKS = {"en": "chapter.ipynb", "zh-CN": "chapter.zh-CN.ipynb"}
# The outputs the notes print for their cells In [2], In [3], In [4] and In [6], in order.
NOTES_OUTPUTS = ["torch.Size([4, 3, 6, 6])", "torch.Size([4, 6, 3, 3])", "torch.Size([4, 6, 6, 6])", SEED_TRACE]


def load_builder():
    spec = importlib.util.spec_from_file_location("build_chapter", DOCS / "build_chapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sources(nb) -> list[tuple[str, str]]:
    return [(cell["cell_type"], cell["source"]) for cell in nb["cells"]]


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_the_notebook_is_what_the_builder_writes(lang):
    builder = load_builder()
    assert builder.LANGS == tuple(NOTEBOOKS)
    assert builder.NOTEBOOKS[lang] == DOCS / NOTEBOOKS[lang]
    built = builder.build(lang)
    on_disk = nbformat.read(DOCS / NOTEBOOKS[lang], as_version=4)
    assert sources(on_disk) == sources(built), f"docs/{NOTEBOOKS[lang]} is stale: run python docs/build_chapter.py"
    assert all(not cell.get("outputs") for cell in on_disk["cells"] if cell["cell_type"] == "code")


def code_cells(nb) -> list[tuple[str, list[str]]]:
    return [(cell["source"], cell["metadata"].get("tags", [])) for cell in nb["cells"] if cell["cell_type"] == "code"]


def markdown_places(nb) -> list[int]:
    return [number for number, cell in enumerate(nb["cells"]) if cell["cell_type"] == "markdown"]


def test_the_chinese_notebook_has_the_english_code_cells_in_the_same_places():
    english, chinese = (nbformat.read(DOCS / NOTEBOOKS[lang], as_version=4) for lang in ("en", "zh-CN"))
    assert code_cells(chinese) == code_cells(english)  # source and tags, in order
    assert markdown_places(chinese) == markdown_places(english)
    assert len(chinese["cells"]) == len(english["cells"])
    # Every markdown cell is translated: it differs from the English one and is written in Chinese.
    for place in markdown_places(english):
        assert chinese["cells"][place]["source"] != english["cells"][place]["source"], place
        assert re.search(r"[\u4e00-\u9fff]", chinese["cells"][place]["source"]), place


def test_the_rendered_copy_has_the_same_cells_and_every_output():
    rendered = nbformat.read(DOCS / "chapter-full-run.ipynb", as_version=4)
    assert sources(rendered)[1:] == sources(load_builder().build())  # its first cell names the machine and date
    code = [cell for cell in rendered["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] for cell in code)
    assert not [o for cell in code for o in cell["outputs"] if o["output_type"] == "error"]


def text_of(cell) -> str:
    """What a cell showed: its printed lines and its value, as the notes show them."""
    parts = []
    for output in cell["outputs"]:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] == "execute_result":
            parts.append(output["data"]["text/plain"])
    return "".join(parts).strip("\n")


@pytest.mark.slow
@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_the_chapter_runs_top_to_bottom_and_prints_the_notes_outputs(lang, tiny_data, tmp_path, monkeypatch):
    builder = load_builder()
    monkeypatch.setenv("RESNETLAB_NOTEBOOK_QUICK", "1")  # every training cell in seconds
    monkeypatch.setenv("RESNETLAB_DATA", str(tiny_data))
    nb = builder.execute(builder.build(lang), tmp_path, timeout=600)
    tagged = [cell for cell in nb.cells if builder.NOTES_OUTPUT in cell.metadata.get("tags", [])]
    assert [text_of(cell) for cell in tagged] == [text.strip("\n") for text in NOTES_OUTPUTS]
    printed = "\n".join(text_of(cell) for cell in nb.cells if cell.cell_type == "code")
    # The one step further after each: the same block, the notes' net in d2l_resnet18, the 1x1 answer, no pooling.
    for needle in ("same output: True", "<All keys matched successfully>", "11,178,378 parameters",
                   "mat1 and mat2 shapes cannot be multiplied (1x32768 and 512x10)", " 32 px -> (1, 10)",
                   "custom:Sequential test accuracy", "torch.Size([4, 32, 96, 96]) groups of the 3x3 conv: 2",
                   "warning: the image has a light background, unlike the training images (dark); try invert=True",
                   "resnet50    4.09 GMACs,  25.6 M parameters"):
        assert needle in printed, needle
    largest = float(printed.split("largest difference: ")[1].split()[0])
    assert largest < 1e-5
    assert (tmp_path / "runs").is_dir()  # the training cells wrote their run folders where the kernel ran
