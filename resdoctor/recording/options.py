"""Options: what to record and how often. Every field is a keyword argument of ``watch()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Options:
    """Recording options.

    Attributes:
        smoothing_every: sample over-smoothing every N steps (0 = off).
        update_every: measure the optimizer update ratio every N steps (0 = off).
        grad_share_every: measure the gradient branch share every N steps (0 = off).
        units_every: measure dead ReLU units and saturated sigmoid/tanh inputs every N steps
            (0 = off).
        sites: record residual-site signals (branch ratio, stream norm).
        nonfinite: check module outputs for NaN/Inf to locate the exact onset.
        flush_every: write the run file every N steps (0 = only at close).
        flush_seconds: also write when this many seconds passed since the last write.
        capacity: rows kept per series before down-sampling (memory/file bound).
        max_events: cap on recorded non-finite onsets (first per module and phase).
        smoothing_samples: positions sampled for the over-smoothing measures.
        record_eval: also record forwards run with gradients disabled (validation).
    """

    smoothing_every: int = 10
    update_every: int = 10
    grad_share_every: int = 10
    units_every: int = 10
    sites: bool = True
    nonfinite: bool = True
    flush_every: int = 500
    flush_seconds: float = 30.0
    capacity: int = 2048
    max_events: int = 1000
    smoothing_samples: int = 64
    record_eval: bool = False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown watch() option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @classmethod
    def everything(cls, **kwargs: Any) -> Options:
        """Every signal every step (the benchmarks' "all" configuration)."""
        base = {"smoothing_every": 1, "update_every": 1, "grad_share_every": 1, "units_every": 1}
        return cls(**{**base, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
