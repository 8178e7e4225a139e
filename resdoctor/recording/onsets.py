"""Where a NaN/Inf was *made*, from one transferred segment (host side, no torch).

The phases of one step, in order (DESIGN.md section 4), each tried only when the earlier ones
found nothing:

1. ``input``: a floating tensor the model received holds NaN/Inf (location: the argument).
2. ``forward``: a module's output is non-finite while its inputs were finite.
3. ``loss``: every module output was finite, but the logged loss is non-finite, or the gradient
   arriving at the model's output is (the loss computation made it).
4. ``backward``: the module whose incoming gradient (of its output) was finite while something
   inside it went bad: its own, untied parameter gradients, its input gradient (leaf ops), or
   the incoming gradient of a submodule. Of those, the innermost, latest in forward order.
   A tied parameter (GPT-2's embedding and head) never blames a module on its own. When only
   parameter gradients went bad and every incoming gradient was finite, a distributed rank may
   have *received* the NaN through the gradient all-reduce: the event says so.
5. ``optimizer``: a parameter turned non-finite in the step while its gradient was finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT = "<root>"


@dataclass
class Onset:
    module: str
    phase: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModuleTable:
    """What the host knows of the model: module names (index = module index), the modules that
    own parameters (the columns of the per-module vectors) and the forward order."""

    names: list[str]
    param_modules: list[str]
    order: dict[str, int]
    world_size: int = 1


def find(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    """The onsets this segment shows, all of one phase (empty when everything was finite)."""
    for phase in (_input, _forward, _loss, _backward, _optimizer):
        found = phase(blocks, vectors, scalars, table)
        if found:
            return found
        if phase is _forward and _forward_bad(blocks):
            # non-finite outputs whose origin no check saw (e.g. an input that is no tensor):
            # naming the first bad module, or the loss, would name the wrong place
            return []
    return []


def clean(
    blocks: dict[str, Any], vectors: dict[str, np.ndarray], scalars: dict[str, float]
) -> bool:
    """True when ``find`` has nothing to find in this segment (see ``clean_many``)."""
    rows = {k: (v[0], v[1][None]) for k, v in blocks.items() if k in ("fwd", "gin", "bwd")}
    loss = np.array([scalars.get("loss", 0.0)], dtype=np.float64)
    return bool(clean_many(rows, {k: np.asarray(v)[None] for k, v in vectors.items()}, loss)[0])


def clean_many(
    blocks: dict[str, Any], vectors: dict[str, np.ndarray], loss: np.ndarray
) -> np.ndarray:
    """Per segment of ``k`` (every value with a leading ``k`` dimension): True when ``find``
    has nothing to find, because what every phase reads is finite and no bad count is set.
    A fast negative for the usual step; ``find`` decides every other one."""
    ok = np.isfinite(loss)
    for kind in ("fwd", "gin", "bwd"):
        if kind in blocks:
            v = blocks[kind][1]
            ok &= np.isfinite(v.reshape(len(v), -1)).all(axis=1)
    for key, v in vectors.items():
        if key.startswith("input:") or key.endswith(("_bad", "_bad_own")):
            ok &= ~np.any(v, axis=-1)
        elif key in ("grad_norm", "param_norm"):  # ``bad_mask`` reads them when no counts
            ok &= np.isfinite(v).all(axis=-1)
    return ok


def _input(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    out: list[Onset] = []
    for key, per_sample in vectors.items():
        if not key.startswith("input:") or not np.any(per_sample):
            continue
        argument = key.split(":", 2)[2]
        samples = np.flatnonzero(per_sample)
        detail = {
            "values": int(np.nansum(per_sample)),
            "samples": samples[:8].tolist(),
            "samples_affected": int(samples.size),
            "batch": int(per_sample.size),
        }
        if argument not in {o.module for o in out}:
            out.append(Onset(argument, "input", detail))
    return out


def _forward(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    if "fwd" not in blocks:
        return []
    # in completion order: [n, (input min, input max, output min, output max)]
    idx, v = blocks["fwd"]
    finite = np.isfinite(v)
    bad = ~(finite[:, 2] & finite[:, 3])
    made = bad & finite[:, 0] & finite[:, 1]
    return [
        Onset(table.names[idx[k]], "forward", {"input_absmax": float(np.abs(v[k, :2]).max())})
        for k in np.flatnonzero(made)
    ]


def _forward_bad(blocks: dict[str, Any]) -> bool:
    if "fwd" not in blocks:
        return False
    v = blocks["fwd"][1]
    return bool((~np.isfinite(v[:, 2:])).any())


def _incoming(blocks: dict[str, Any], table: ModuleTable) -> tuple[set[str], set[str]]:
    """(modules whose incoming gradient went bad, modules whose incoming gradient was seen)."""
    if "gin" not in blocks:
        return set(), set()
    idx, v = blocks["gin"]
    ok = np.isfinite(v).all(axis=1)
    seen = {table.names[i] for i in idx}
    return {table.names[i] for i, good in zip(idx, ok, strict=True) if not good}, seen


def _loss(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    # the usual step has every incoming gradient finite: one vectorised check, no name sets
    gin_bad = "gin" in blocks and not np.isfinite(blocks["gin"][1]).all()
    loss = scalars.get("loss")
    if gin_bad and ROOT in _incoming(blocks, table)[0]:
        return [Onset("loss", "loss", {"seen_as": "the gradient of the model's output"})]
    if loss is not None and not np.isfinite(loss):
        return [Onset("loss", "loss", {"seen_as": "the logged loss", "loss": float(loss)})]
    return []


def _backward(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    grads_bad = bad_mask(vectors, "grad")
    leaf_bad = set()
    if "bwd" in blocks:  # [n, (min, max)] of parameter-free leaf ops' input gradients
        idx, v = blocks["bwd"]
        leaf_bad = {table.names[i] for i in idx[~np.isfinite(v).all(axis=1)]}
    if not grads_bad.any() and not leaf_bad:
        return []
    own_counts = vectors.get("grad_bad_own")
    own_mask = own_counts > 0 if own_counts is not None else grads_bad
    own = {table.param_modules[i] for i in np.flatnonzero(own_mask)}
    bad_in, seen = _incoming(blocks, table)
    if not seen:  # no incoming gradients recorded: the latest bad module in forward order
        bad = own | leaf_bad | {table.param_modules[i] for i in np.flatnonzero(grads_bad)}
        return [
            Onset(
                max(bad, key=lambda n: (table.order.get(n, -1), n)),
                "backward",
                {"modules_affected": len(bad)},
            )
        ]
    origin = _made_in(own | leaf_bad, bad_in, table)
    if origin is None:  # only tied parameters went bad
        bad = {table.param_modules[i] for i in np.flatnonzero(grads_bad)}
        origin = max(bad, key=lambda n: (table.order.get(n, -1), n))
    detail: dict[str, Any] = {"modules_affected": int(grads_bad.sum()) + len(leaf_bad)}
    if not bad_in and not leaf_bad:
        detail["evidence"] = "parameter gradients only"
        if table.world_size > 1:  # this rank's backward stayed finite: the all-reduce brought it
            detail["received"] = True
    return [Onset(origin, "backward", detail)]


def _made_in(bad: set[str], bad_in: set[str], table: ModuleTable) -> str | None:
    """The innermost module whose incoming gradient was finite while it, or a submodule's
    incoming gradient, went bad; the latest in forward order among several."""
    contains: set[str] = set()
    for name in bad | bad_in:
        contains.update(_self_and_ancestors(name))
    candidates = {m for m in contains if m not in bad_in}
    minimal = [
        m for m in candidates if not any(c != m and m in _self_and_ancestors(c) for c in candidates)
    ]
    if not minimal:
        return None
    return max(minimal, key=lambda n: (table.order.get(n, -1), n.count("."), n))


def _self_and_ancestors(name: str) -> list[str]:
    if name == ROOT:
        return [ROOT]
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts), 0, -1)] + [ROOT]


def _optimizer(
    blocks: dict[str, Any],
    vectors: dict[str, np.ndarray],
    scalars: dict[str, float],
    table: ModuleTable,
) -> list[Onset]:
    params_bad = bad_mask(vectors, "param")
    if not params_bad.any() or bad_mask(vectors, "grad").any():
        return []
    bad_idx = np.flatnonzero(params_bad)
    first = min(bad_idx, key=lambda i: table.order.get(table.param_modules[i], -1))
    return [Onset(table.param_modules[first], "optimizer", {"modules_affected": int(len(bad_idx))})]


def bad_mask(vectors: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """Per-module non-finite mask for "grad" or "param" (exact counts when recorded)."""
    counts = vectors.get(f"{kind}_bad")
    if counts is not None:
        return counts > 0
    norms = vectors.get(f"{kind}_norm")
    return ~np.isfinite(norms) if norms is not None else np.zeros(0, bool)
