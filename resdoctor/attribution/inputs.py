"""The sample batch of an attribution call, and the scalar per sample that is attributed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Target = int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class Batch:
    """One model call ``model(*args, **kwargs)``; top-level tensors are the sample batch.

    Built from a tensor (one positional input), a tuple or list (positional inputs) or a mapping
    (keyword inputs, e.g. ``{"input_ids": ids}`` for a transformers model).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Any) -> Batch:
        if isinstance(inputs, Batch):
            return inputs
        if isinstance(inputs, torch.Tensor):
            batch = cls((inputs,))
        elif isinstance(inputs, Mapping):
            batch = cls((), {str(k): v for k, v in inputs.items()})
        elif isinstance(inputs, (tuple, list)):
            batch = cls(tuple(inputs))
        else:
            raise TypeError(
                "inputs must be a tensor, a tuple/list of positional inputs or a "
                f"dict of keyword inputs, not {type(inputs).__name__}"
            )
        if not batch.tensors():
            raise ValueError(
                "inputs hold no batched tensor (a tensor with a leading batch dimension)"
            )
        return batch

    def _all(self) -> list[tuple[int | str, torch.Tensor]]:
        pos = [(i, a) for i, a in enumerate(self.args) if isinstance(a, torch.Tensor)]
        kw = [(k, v) for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)]
        return [*pos, *kw]

    def _slots(self) -> list[tuple[int | str, torch.Tensor]]:
        size = self.size
        return [(k, t) for k, t in self._all() if t.dim() and t.shape[0] == size]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The batched tensor inputs (leading size = ``size``); others stay as they are."""
        return tuple(t for _, t in self._slots())

    @property
    def size(self) -> int:
        """Samples in the batch: the leading size of the first tensor input with a dimension."""
        for _, t in self._all():
            if t.dim():
                return int(t.shape[0])
        return 1

    def rebuild(self, tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` with the top-level tensors replaced by ``tensors`` (same order)."""
        args, kwargs = list(self.args), dict(self.kwargs)
        for (slot, _), t in zip(self._slots(), tensors, strict=True):
            if isinstance(slot, int):
                args[slot] = t
            else:
                kwargs[slot] = t
        return tuple(args), kwargs

    def take(self, n: int | None) -> Batch:
        """The first ``n`` samples (the batched tensors are sliced)."""
        if n is None or n >= self.size:
            return self
        if n < 1:
            raise ValueError(f"samples must be at least 1, not {n}")
        args, kwargs = self.rebuild(tuple(t[:n] for t in self.tensors()))
        return Batch(args, kwargs)

    def to(self, device: torch.device) -> Batch:
        """Every tensor input on ``device``."""
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args)
        kwargs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()
        }
        return Batch(args, kwargs)


def logits(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: itself, ``.logits``, or its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, (tuple, list)) or isinstance(output, Mapping):
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"cannot find the prediction tensor in a {type(output).__name__} output")


class Objective:
    """The scalar attributed for each sample, ``[B]``, from a model output.

    ``[B]`` or ``[B, 1]`` outputs are used as they are. Otherwise the last dimension holds
    classes (``[B, C]``; ``[B, T, V]`` for a language model) and ``target`` picks one per sample
    and position, summed over positions: None = the class the model predicts on the first call
    (kept for later calls, so perturbed passes score the same class), an int = that class, a
    tensor ``[B]`` or ``[B, T]`` = those classes. A callable gets the output, returns ``[B]``.
    A batch ``k`` times larger (perturbations stacked by captum) repeats the classes ``k`` times.
    """

    def __init__(self, target: Target = None) -> None:
        self.target = target
        self._index: torch.Tensor | None = None  # [B, T, 1]

    def __call__(self, output: Any) -> torch.Tensor:
        out = logits(output)
        if callable(self.target) and not isinstance(self.target, torch.Tensor):
            picked = self.target(out)
            if not isinstance(picked, torch.Tensor) or picked.dim() != 1:
                raise ValueError("a target callable must return one value per sample, shape [B]")
            return picked
        b = out.shape[0]
        if out.dim() == 1 or out[0].numel() == 1:
            return out.reshape(b)
        flat = out.reshape(b, -1, out.shape[-1])  # [B, T, C]
        index = self._classes(flat)
        if index.shape[0] != b:
            index = index.repeat(b // index.shape[0], 1, 1)
        return flat.gather(-1, index).sum(1).squeeze(-1)

    def _classes(self, flat: torch.Tensor) -> torch.Tensor:
        if self._index is None:
            b, t = flat.shape[:2]
            target = self.target
            if target is None:
                index = flat.detach().argmax(-1, keepdim=True)
            elif isinstance(target, torch.Tensor):
                index = target.to(flat.device, torch.long).reshape(b, -1, 1).expand(-1, t, 1)
            elif isinstance(target, int):
                index = torch.full((b, t, 1), target, device=flat.device, dtype=torch.long)
            else:
                raise TypeError(
                    "target must be None, an int, a tensor of classes or a callable, "
                    f"not {type(target).__name__}"
                )
            self._index = index
        return self._index


def describe(target: Target) -> str:
    """A short, plain description of ``target`` for results and the run file."""
    if target is None:
        return "predicted class"
    if isinstance(target, int):
        return f"class {target}"
    if isinstance(target, torch.Tensor):
        return f"given classes {list(target.shape)}"
    return getattr(target, "__name__", "callable")
