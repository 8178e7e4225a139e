"""Attribution of residual contributions: how much of the prediction flows through each branch.

Norm ratios say how big a branch is; attribution says how much the output depends on it. At each
residual addition ``out = a + b`` (skip ``a``, branch ``b``) captum attributes the output to the
two operands, per sample, and

    share = sum |attr(branch)| / (sum |attr(branch)| + sum |attr(skip)|)   in [0, 1]

(sums over the sample batch): 0 = the prediction does not depend on the branch (dead branch),
1 = only on the branch (the identity highway carries nothing). Two methods:

- ``"gradient"`` (default, one forward + backward): captum ``LayerGradientXActivation`` on the
  operands, ``attr = g . a`` with ``g`` the gradient at the sum; the first-order change of the
  output when the operand is removed. Right before a scale-invariant normalization (post-LN
  blocks, the last pre-LN block) ``g . (a + b) = 0``: the two cancel, the share drifts to 0.5
  and ``coherence`` (near 0) says so.
- ``"ablation"`` (one batched forward, no backward): captum ``FeatureAblation`` over operand
  gates, ``attr`` = the exact change of the output when the operand is zeroed.

The pass leaves the model as it was: eval mode (by default) and then the previous mode of every
module, buffers (BatchNorm statistics), the RNG state and parameter ``.grad`` are all restored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from resdoctor.attribution import methods
from resdoctor.attribution.inputs import Batch, Objective, Target, describe
from resdoctor.recording.discovery import Site, discover

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Attribution", "SiteAttribution", "UnknownSiteError", "attribute", "preserved"]

Method = Literal["gradient", "ablation"]
Mode = Literal["eval", "train"]
METHODS: tuple[str, ...] = ("gradient", "ablation")


class UnknownSiteError(ValueError):
    """A site name that the model does not have."""


@dataclass(frozen=True)
class SiteAttribution:
    """Attribution at one residual site: summed |attribution| of its branch and skip operands.

    ``coherence`` (gradient method) = sum |attr(skip) + attr(branch)| / (sum |attr(skip)| +
    sum |attr(branch)|): near 1 the two add up, near 0 they cancel and the share means little.
    """

    name: str
    kind: str
    branch: float
    skip: float
    coherence: float = math.nan

    @property
    def share(self) -> float:
        """Branch share in [0, 1]; NaN when the site was not attributed or both are 0."""
        total = self.branch + self.skip
        return self.branch / total if total > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "branch": _plain(self.branch),
            "skip": _plain(self.skip),
            "share": _plain(self.share),
            "coherence": _plain(self.coherence),
        }


@dataclass(frozen=True)
class Attribution:
    """Per-site attribution of one sample batch, with the parameters that produced it."""

    sites: tuple[SiteAttribution, ...]
    method: str
    target: str
    samples: int
    mode: str

    @property
    def shares(self) -> dict[str, float]:
        return {s.name: s.share for s in self.sites}

    def __getitem__(self, name: str) -> SiteAttribution:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[SiteAttribution]:
        return iter(self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "samples": self.samples,
            "mode": self.mode,
            "sites": [s.to_dict() for s in self.sites],
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per site: name, kind, branch, skip, share, coherence (NaN where unknown)."""
        import pandas as pd

        cols = ["name", "kind", "branch", "skip", "share", "coherence"]
        rows = [
            {
                "name": s.name,
                "kind": s.kind,
                "branch": s.branch,
                "skip": s.skip,
                "share": s.share,
                "coherence": s.coherence,
            }
            for s in self.sites
        ]
        return pd.DataFrame(rows, columns=cols)


def attribute(
    model: nn.Module,
    inputs: Any,
    target: Target = None,
    sites: Sequence[Site | str] | None = None,
    *,
    method: Method = "gradient",
    samples: int | None = None,
    mode: Mode = "eval",
) -> Attribution:
    """Share of the output attribution that flows through each residual branch vs its skip.

    Args:
        model: the network; left exactly as it was (mode, buffers, RNG, ``.grad``).
        inputs: one batch: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        target: what is attributed per sample: None = the predicted class (or the output itself
            when it is one number per sample), an int class, a tensor of classes ``[B]`` /
            ``[B, T]``, or a callable ``output -> [B]``.
        sites: sites or site names to attribute; default all, found with ``discover``. Pass all
            the model's ``Site`` objects (e.g. ``watcher.sites``) to skip discovery.
        method: ``"gradient"`` (one forward + backward) or ``"ablation"`` (exact, one batched
            forward of ``2 x sites x samples`` samples).
        samples: use only the first ``samples`` samples of ``inputs``.
        mode: ``"eval"`` (default: BatchNorm running statistics, no dropout) or ``"train"``.

    Returns:
        an ``Attribution``; sites whose addition could not be found have NaN shares.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    methods.captum_attr()
    batch = Batch.of(inputs).take(samples)
    with preserved(model, mode):
        if sites is None or any(isinstance(s, str) for s in sites):
            found = discover(model, *batch.args, **batch.kwargs)
        else:  # all sites of the model (e.g. ``watcher.sites``): nested ones are told apart
            found = sorted((s for s in sites if isinstance(s, Site)), key=lambda s: s.index)
        chosen = _choose(found, sites)
        position = {s.index: k for k, s in enumerate(found)}
        routed = [position[s.index] for s in chosen if s.skip is not None and s.index in position]
        totals: methods.Totals = {}
        if routed and method == "gradient":
            totals = methods.gradient(model, batch, Objective(target), found, routed)
        elif routed:
            totals = methods.ablation(
                model, batch, Objective(target), found, routed, stack=mode == "eval"
            )
    nan = (math.nan, math.nan, math.nan)
    result = tuple(
        SiteAttribution(s.name, s.kind, *totals.get(position.get(s.index, -1), nan)) for s in chosen
    )
    return Attribution(result, method, describe(target), batch.size, mode)


def _choose(found: list[Site], wanted: Sequence[Site | str] | None) -> list[Site]:
    if wanted is None:
        return found
    names = {s.name: s for s in found}
    missing = [w for w in wanted if isinstance(w, str) and w not in names]
    if missing:
        raise UnknownSiteError(
            f"no residual site named {', '.join(map(repr, missing))}; "
            f"sites: {', '.join(names) or 'none'}"
        )
    return [names[w] if isinstance(w, str) else w for w in wanted]


@contextlib.contextmanager
def preserved(model: nn.Module, mode: Mode = "eval") -> Iterator[None]:
    """Run in ``mode`` with gradients on, then restore every module's mode, the buffers, the RNG
    state and parameter ``.grad``: the model is left as it was, bit for bit."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', not {mode!r}")
    training = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train(mode == "train")
            yield
    finally:
        for m, flag in training:
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            if p.grad is not g:
                p.grad = g


def _plain(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
