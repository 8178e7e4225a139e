"""NonFinite: where NaN/Inf is made, checked exactly at every module boundary.

Each checked module's inputs and outputs are reduced to ``(min, max)`` (one fused ``aminmax``):
both are finite exactly when every element is, and unlike a norm they cannot overflow, so huge
but finite activations stay finite. A row ``[in min, in max, out min, out max]`` per module call
goes to the segment; the journal finds the first module whose output went bad while its inputs
were finite. Parameter-free leaf ops can make NaN in backward without any parameter gradient
showing it first: their input gradient is checked too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks

from resdoctor.recording.pytree import iter_tensors
from resdoctor.recording.segment import Segment
from resdoctor.recording.sensors.kernels import TensorCache, extrema_into
from resdoctor.recording.sensors.needs import Hooks, Needs
from resdoctor.recording.trace import tensor_version

# Modules that turn finite inputs into finite outputs: their outputs need no NaN/Inf check.
FINITE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Mish,
    nn.Hardtanh,
    nn.Softmax,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
)

# The same for activation modules of libraries resdoctor does not import, by qualified class
# name: each computes a bounded function of x times x (or a saturating function), finite for
# every finite input, in float16 too (an overflowing x**3 inside tanh saturates it to +-1).
FINITE_PRESERVING_NAMES = frozenset(
    f"transformers.activations.{name}"
    for name in (
        "GELUActivation",
        "GELUTanh",
        "PytorchGELUTanh",
        "FastGELUActivation",
        "NewGELUActivation",
        "QuickGELUActivation",
        "AccurateGELUActivation",
        "ClippedGELUActivation",
        "SiLUActivation",
        "MishActivation",
        "LaplaceActivation",
        "LinearActivation",
    )
)

# Modules whose bias gradient is the sum of their incoming gradient (the gradient of their
# output) over every dimension but the bias's own: ``y = f(x) + b``. Exact types only: a
# subclass may use its bias otherwise. Checked by class name for libraries not imported here.
BIAS_SUMS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)
BIAS_SUM_NAMES = frozenset({"transformers.pytorch_utils.Conv1D"})

Slots = tuple[int, int]


def summing_bias(module: nn.Module) -> nn.Parameter | None:
    """The bias of ``module`` whose gradient sums its incoming gradient, if it has one that can
    stand in for the incoming gradient's check.

    A sum with a NaN/Inf term is NaN/Inf, so a non-finite incoming gradient always shows in the
    bias gradient; a finite one shows as finite unless the sum overflows, which needs gradients
    near the dtype's maximum: float32, bfloat16 and float64 biases qualify, float16 ones (max
    65504) do not. Only a trainable parameter of this module alone (not tied to another), and
    only while the module has no forward hook of its own yet: a hook that replaces the output
    (registered before ``watch``, it runs before resdoctor's) makes the checked gradient that
    of the replacement."""
    cls = type(module)
    if cls not in BIAS_SUMS and f"{cls.__module__}.{cls.__qualname__}" not in BIAS_SUM_NAMES:
        return None
    if module._forward_hooks or _global_forward_hooks:  # registered before resdoctor's, one
        return None  # may replace the output: its gradient is then no longer what b sums
    bias = getattr(module, "bias", None)
    if type(bias) is not nn.Parameter or not bias.requires_grad or bias.dtype == torch.float16:
        return None
    return bias


def finite_preserving(module: nn.Module) -> bool:
    """Finite inputs give finite outputs: ``module`` needs no output check."""
    if isinstance(module, FINITE_PRESERVING):
        return True
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" in FINITE_PRESERVING_NAMES


class NonFinite:
    """Exact NaN/Inf checks of module inputs, outputs and (leaf ops) input gradients."""

    needs = Needs(frozenset({"module_io", "input_grads"}))

    def __init__(self) -> None:
        self._cache = TensorCache()
        # output tensors whose incoming gradient is hooked in this forward -> module indices
        self._incoming: dict[int, tuple[weakref.ref[torch.Tensor], int, list[int]]] = {}
        # incoming gradients read from a bias gradient, since the last backward:
        # (the bias's parameter index, the modules whose incoming gradient it is)
        self._summed: list[tuple[int, list[int]]] = []
        # parameter indices on the device (and their pinned host copy, kept while it copies)
        self._at: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def checks(module: nn.Module) -> tuple[bool, bool, bool] | None:
        """``(check outputs, check input gradients, check the incoming gradient)`` for
        ``module``, None to skip it.

        Outputs: every module that can turn finite inputs into NaN/Inf. Input gradients:
        parameter-free leaf ops (custom functions), whose backward can make NaN without any
        parameter gradient showing it. Incoming gradient (the gradient of the module's output):
        every module that owns parameters or can make NaN, so a backward onset is the module
        whose incoming gradient was finite and whose own gradients were not.
        """
        has_params = any(True for _ in module.parameters(recurse=False))
        preserving = finite_preserving(module)
        if preserving and not has_params:
            return None
        leaf_op = not list(module.children()) and not any(True for _ in module.parameters())
        return not preserving, leaf_op and not preserving, True

    def reset(self) -> None:
        """A new forward (or segment): pooled slots of the last one are no longer valid."""
        self._cache.clear()
        self._incoming.clear()

    def inputs(self, seg: Segment, args: Any, kwargs: Any) -> Slots | None:
        """Pool slots of the inputs' ``(min, max)``; None when no input is floating."""
        return self._extrema(seg, _inputs(args, kwargs))

    def outputs(self, seg: Segment, index: int, inputs: Slots | None, output: Any) -> None:
        """Record module ``index``'s row; an input without floats (token ids) reads as 0."""
        slots = self._extrema(seg, _outputs(output))
        if slots is not None:
            seg.add_row("fwd", index, (inputs or (-1, -1)) + slots)

    def incoming(
        self,
        current: Callable[[], Segment],
        hooks: Hooks,
        index: int,
        output: Any,
        bias: int | None = None,
    ) -> None:
        """Check the gradient that reaches module ``index``'s output in backward. With ``bias``
        (the parameter index of the module's ``summing_bias``), no hook: the check is read
        from that bias's gradient after the backward (``summed_rows``)."""
        t = next((t for t in _outputs(output) if t.is_floating_point() and t.requires_grad), None)
        if t is None:
            return
        # a container returning its last child's output: one hook, one reduction, both rows
        seen = self._incoming.get(id(t))
        if seen is not None and seen[0]() is t and seen[1] == tensor_version(t):
            seen[2].append(index)
            return
        indices = [index]
        self._incoming[id(t)] = (weakref.ref(t), tensor_version(t), indices)
        if bias is not None:
            self._summed.append((bias, indices))
            return

        def on_grad(g: torch.Tensor) -> None:
            if g.numel():
                seg = current()
                slots = extrema_into(seg, g)
                for i in indices:
                    seg.add_row("gin", i, slots)

        hooks.tensor(t, on_grad)

    def summed_rows(self, seg: Segment, finiteness: torch.Tensor | None) -> None:
        """After a backward: the "gin" rows of the modules whose incoming gradient is read from
        their bias gradient, from ``finiteness`` (per parameter, finite exactly when that
        parameter's gradient is: ``GradNorm.raw``'s second vector). One gather for all, into
        the segment's buffer; the index tensor is made once per set of modules."""
        pending, self._summed = self._summed, []
        if not pending or finiteness is None:
            return
        key = tuple(k for k, _ in pending)
        known = self._at.get(key)
        if known is None or known[0].device != finiteness.device:
            if len(self._at) >= 8:  # steps repeat a few sets at most
                self._at.clear()
            host = torch.tensor(key)
            if finiteness.device.type != "cpu":  # pinned: the copy does not wait for the device
                host = host.pin_memory()
            known = self._at[key] = (host.to(finiteness.device, non_blocking=True), host)
        at = known[0]
        first, block = seg.reserve_block(finiteness, len(key))
        torch.index_select(finiteness, 0, at, out=block)
        for j, (_, indices) in enumerate(pending):
            for i in indices:
                seg.add_row("gin", i, (first + j, first + j))

    def discard_summed(self) -> None:
        """A segment ended without the backward its forwards prepared for."""
        self._summed.clear()

    def last_output(self) -> torch.Tensor | None:
        """The latest module output of this forward whose gradient is hooked (alive), if any."""
        for ref, _, _ in reversed(self._incoming.values()):
            t = ref()
            if t is not None:
                return t
        return None

    def root_inputs(self, seg: Segment, args: Any, kwargs: Any, names: list[str]) -> list[str]:
        """Per-sample counts of non-finite values in each floating tensor the model receives,
        as vectors ``input:{forward}:{argument}`` (one pass over each input; no sync). Returns
        the labels of inputs that cannot be checked (sparse tensors)."""
        merged = dict(zip(names, args)) if len(names) >= len(args) else dict(enumerate(args))
        merged.update(kwargs)
        skipped: list[tuple[Any, ...]] = []
        for path, t in iter_tensors(merged, skipped=skipped):
            if not t.is_floating_point() or not t.numel():
                continue
            bad = ~torch.isfinite(t.detach())
            per_sample = bad.reshape(bad.shape[0], -1).sum(1) if bad.dim() else bad.reshape(1)
            seg.vectors[f"input:{seg.forwards}:{_label(path)}"] = per_sample
        return [_label(path) for path in skipped]

    def input_grads(
        self, current: Callable[[], Segment], hooks: Hooks, index: int, args: Any, kwargs: Any
    ) -> None:
        """Check the gradient reaching each floating input of module ``index`` in backward."""

        def on_grad(g: torch.Tensor) -> None:
            if g.numel():
                seg = current()
                seg.add_row("bwd", index, extrema_into(seg, g))

        for t in _inputs(args, kwargs):
            if t.is_floating_point() and t.requires_grad:
                hooks.tensor(t, on_grad)

    def _extrema(self, seg: Segment, tensors: list[torch.Tensor]) -> Slots | None:
        """Pool slots of ``(min, max)`` over the floating tensors, each reduced at most once per
        version per forward."""
        if len(tensors) == 1:
            return self._extremum(seg, tensors[0])
        found = [s for s in (self._extremum(seg, t) for t in tensors) if s is not None]
        if len(found) < 2:
            return found[0] if found else None
        pool = seg.pool
        lo = torch.stack([pool[a] for a, _ in found]).amin()
        hi = torch.stack([pool[b] for _, b in found]).amax()
        return seg.put(lo), seg.put(hi)

    def _extremum(self, seg: Segment, t: torch.Tensor) -> Slots | None:
        def measure(t: torch.Tensor) -> Slots | None:
            if not t.is_floating_point() or not t.numel():
                return None
            return extrema_into(seg, t)

        return self._cache.get(t, measure)


def _label(path: tuple[Any, ...]) -> str:
    """``("input_ids",)`` -> ``input_ids``; ``(0,)`` -> ``args[0]``; ``("batch", "x")`` ->
    ``batch['x']``."""
    head, rest = path[0], path[1:]
    text = f"args[{head}]" if isinstance(head, int) else str(head)
    return text + "".join(f"[{k!r}]" for k in rest)


def _inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors among a module's inputs (fast path for the usual single tensor)."""
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
        return [args[0]]
    return [t for _, t in iter_tensors((args, kwargs))]


def _outputs(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for _, t in iter_tensors(output)]
