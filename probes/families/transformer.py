"""``resdoctor.models.TinyTransformer`` (pre-LN, post-LN or no LayerNorm) on a Markov-chain LM."""

from __future__ import annotations

from typing import Any, Literal

from probes import data
from probes.faults import Gate, Wrapped
from probes.measure import At, SiteTap
from probes.recipe import Recipe
from probes.train import Setup
from resdoctor.models import TinyTransformer

FIXES = frozenset({"pre-layernorm", "add-normalization", "residual-scaling", "reduce-depth"})

DEFAULTS: dict[str, Any] = {"depth": 4, "dim": 32, "heads": 4, "norm": "pre", "residual_scale": 1.0}


def build(r: Recipe) -> Setup:
    """arch: depth, dim, heads, norm ("pre" | "post" | "none"; True means "pre"),
    residual_scale, gate (block, init), guard_eps, l1, bad_batches (steps whose batch is
    scrambled)."""
    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    norm: Literal["pre", "post", "none"] = "pre" if a["norm"] is True else a["norm"]
    model = TinyTransformer(
        vocab=64,
        dim=a["dim"],
        depth=a["depth"],
        heads=a["heads"],
        max_len=32,
        norm=norm,
        residual_scale=float(a["residual_scale"]),
    )
    gate = a.get("gate")
    if gate is not None and gate[0] < a["depth"]:
        block = model.blocks[gate[0]]
        block.mlp = Wrapped(block.mlp, Gate(gate[1], a.get("guard_eps")))
    batches = data.tokens(seed=r.seed)
    if a.get("bad_batches"):  # batches from another distribution at these steps
        batches = data.scrambled(batches, tuple(a["bad_batches"]), seed=r.seed)
    return Setup(
        model,
        batches,
        data.cross_entropy,
        taps(a["depth"], norm),
        l1=float(a.get("l1", 0.0)),
    )


def taps(depth: int, norm: str) -> list[SiteTap]:
    """Two sites per block; the sums are read where the next module takes them as input."""
    out = []
    for i in range(depth):
        b = f"blocks.{i}"
        if norm == "post":  # x1 = ln1(x + attn(x)); y = ln2(x1 + mlp(x1))
            out += [
                SiteTap(f"{b}#0", skip=At(b, "in"), result=At(f"{b}.ln1", "in")),
                SiteTap(f"{b}#1", skip=At(f"{b}.ln1"), result=At(f"{b}.ln2", "in")),
            ]
        else:  # x1 = x + attn(ln1(x)); y = x1 + mlp(ln2(x1))
            out += [
                SiteTap(f"{b}#0", skip=At(b, "in"), result=At(f"{b}.ln2", "in")),
                SiteTap(f"{b}#1", skip=At(f"{b}.ln2", "in"), result=At(b)),
            ]
    return out
