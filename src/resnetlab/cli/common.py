"""What several commands share: the ``N,C,H,W`` argument, and the choices of device and precision."""

from __future__ import annotations

from ..errors import ResnetlabError
from ..util.runtime import DEVICES, PRECISIONS

__all__ = ["DEVICES", "PRECISIONS", "parse_input_size"]


def parse_input_size(text: str) -> tuple[int, int, int, int]:
    """Parse ``N,C,H,W`` into four positive integers, or raise :class:`ResnetlabError`."""
    parts = [p.strip() for p in text.split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise ResnetlabError(
            f"--input-size {text!r} is not four positive integers N,C,H,W; write it like 1,1,256,256"
        )
    return dims  # type: ignore[return-value]
