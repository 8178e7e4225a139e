"""resdoctor's version, and the oldest torch it runs on."""

from __future__ import annotations

__version__ = "0.1.0"
TORCH_FLOOR = (2, 4)  # torch._foreach_max: the fused NaN/Inf check of every parameter


def check_torch(version: str | None = None) -> None:
    """Raise ``ImportError`` with one clear line when torch is older than ``TORCH_FLOOR``."""
    if version is None:
        import torch

        version = str(torch.__version__)
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(
            f"resdoctor needs torch >= {floor} (found {version}): pip install 'torch>={floor}'"
        )


check_torch()
