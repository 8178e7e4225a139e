"""GradShare: the branch's share of the gradient reaching a residual site's input.

share = |g_branch| / (|g_branch| + |g_skip|) at the site's source x. Each part is read where it
enters x: hooks on the autograd nodes of the branch (and of a projection shortcut) that consume
x; an identity skip passes the sum's gradient on unchanged. Gradient reaching x from outside the
site is not counted. Two dots per site, no difference of gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from resdoctor.recording.discovery import Site
from resdoctor.recording.segment import Segment
from resdoctor.recording.sensors.kernels import sum_squares_into
from resdoctor.recording.sensors.needs import Hooks, Needs, every
from resdoctor.recording.sensors.site_magnitude import Operands


class GradShare:
    """Hooks a complete site's autograd nodes; the backward pools ``||g_skip||^2`` and
    ``||g_branch||^2`` as one row."""

    kind = "gshare"

    def __init__(self, every_n: int = 10) -> None:
        self.needs = Needs(frozenset({"site_operands"}), every(every_n))

    def __call__(
        self, current: Callable[[], Segment], hooks: Hooks, i: int, site: Site, p: Operands
    ) -> None:
        identity = site.kind == "identity" and site.source == site.skip
        x_fn = p.get("skip_fn") if identity else p.get("source_fn")
        skip_fn = x_fn if identity else p.get("skip_fn")
        branch_fn = p.get("branch_fn") or _other_operand(p.get("result_fn"), skip_fn)
        if x_fn is None or branch_fn is None:
            return
        branch_nodes = _consumers(branch_fn, x_fn)
        if not branch_nodes:
            return
        box: dict[str, int] = {}

        def arrived(role: str) -> Callable[[torch.Tensor], None]:
            def store(g: torch.Tensor) -> None:
                seg = current()
                box[role] = sum_squares_into(seg, g)
                if len(box) == 2:
                    seg.add_row(self.kind, i, (box["skip"], box["branch"]))

            return store

        if identity:
            carrier = p.get("result") if p.get("result") is not None else p.get("branch")
            if carrier is None or not carrier.requires_grad:
                return
            hooks.tensor(carrier, arrived("skip"))
        else:
            skip_nodes = _consumers(skip_fn, x_fn)
            if not skip_nodes:
                return
            _sum_grads(hooks, skip_nodes, arrived("skip"))
        _sum_grads(hooks, branch_nodes, arrived("branch"))

    @staticmethod
    def decode(v: np.ndarray) -> np.ndarray:
        """Rows ``[||g_skip||^2, ||g_branch||^2]`` -> ``[share]``."""
        with np.errstate(invalid="ignore", over="ignore"):
            skip, branch = np.sqrt(v[..., 0]), np.sqrt(v[..., 1])
            return (branch / np.maximum(branch + skip, 1e-30))[..., None]


def _sum_grads(
    hooks: Hooks, consumers: list[tuple[Any, int]], done: Callable[[torch.Tensor], None]
) -> None:
    """Hook each ``(node, k)``; once all have run, ``done(sum of their k-th input grads)``: the
    gradient that reaches their common input through them."""
    parts: list[torch.Tensor] = []

    def collect(k: int) -> Callable[..., None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            if grad_inputs[k] is not None:
                parts.append(grad_inputs[k])
            if len(parts) == len(consumers):
                done(parts[0] if len(parts) == 1 else torch.stack(parts).sum(0))

        return hook

    for node, k in consumers:
        hooks.node(node, collect(k))


def _consumers(start: Any, target: Any, limit: int = 512) -> list[tuple[Any, int]]:
    """Autograd nodes reachable from ``start`` (without passing ``target``) that take
    ``target``'s output as their k-th input: ``[(node, k), ...]``; empty when the graph is larger
    than ``limit`` nodes (an incomplete list would give a wrong sum)."""
    if start is None or target is None:
        return []
    found: list[tuple[Any, int]] = []
    todo: list[Any] = [start]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        if len(seen) >= limit:
            return []
        seen.add(id(node))
        for k, (nxt, _) in enumerate(node.next_functions):
            if nxt is target:
                found.append((node, k))
            elif nxt is not None:
                todo.append(nxt)
    return found


def _other_operand(sum_fn: Any, skip_fn: Any) -> Any:
    """The branch's autograd node from the sum's: a branch that is no module's output (such as
    ``x + scale * h``) is the operand of the addition that is not the skip."""
    if sum_fn is None or skip_fn is None:
        return None
    others = [f for f, _ in sum_fn.next_functions if f is not None and f is not skip_fn]
    return others[0] if len(others) == 1 else None
