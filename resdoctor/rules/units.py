"""dead-units and saturation: activations that pass no gradient.

dead-units: ReLU layers whose units output 0 on the whole batch (AUTOTRAINER, ICSE'21: a dying
ReLU when >= 70% of a layer's gradients are zero; DeepDiagnosis, ICSE'22: dead-neuron threshold
0.7). A ReLU network always has some zero units: sparsity is not death, hence 70%, sustained.
saturation: sigmoid / tanh inputs beyond +-5, where the derivative is below 0.007 / 2e-4
(DeepDiagnosis' saturated activation).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import short_list, sig
from resdoctor.rules._common import compact, lr_fix
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


def _hot_layers(
    run: Run, signal: str, level: float, min_fraction: float, warmup_fraction: float, rows: int
) -> tuple[pd.DataFrame, list[str]]:
    tl = timeline(run)
    df = tl.healthy(run.series(signal), start=int(warmup_fraction * run.steps))
    df = df.dropna(how="all")
    if len(df) < rows:
        return df, []
    hot = (df >= level).where(df.notna())
    share = hot.mean()  # over the sampled rows where the layer was measured
    return df, [c for c in df.columns if share.get(c, 0) >= min_fraction]


def _finding(
    code: str,
    run: Run,
    df: pd.DataFrame,
    layers: list[str],
    level: float,
    what: str,
    fixes_: list[Fix],
    thresholds: dict[str, Any],
) -> Finding:
    med = df[layers].median()
    worst = str(med.idxmax())
    onset = int(df.index[(df[layers] >= level).any(axis=1).to_numpy()][0])
    evidence: dict[str, Any] = {
        "layers": layers,
        "median_share": compact(med.to_dict()),
        "worst_layer": worst,
        "layers_measured": int(df.shape[1]),
        "rows": int(len(df)),
    }
    return Finding(
        code=code,
        severity="warning",
        title=f"{len(layers)} layer{'s' * (len(layers) != 1)} with {what} (worst {worst}: "
        f"{med[worst]:.0%})",
        message=(
            f"In {short_list(layers, 4)}, at least {level:.0%} {what} on most sampled steps "
            f"from step {onset} (median {sig(float(med[worst]), 3):.0%} in {worst}): no "
            "gradient flows back through them."
        ),
        step=onset,
        location=worst,
        phase="forward",
        evidence=evidence,
        fixes=tuple(fixes_),
        thresholds=thresholds,
    )


@rule("dead-units", requires=("dead_units",))
def dead_units(
    run: Run,
    *,
    dead_share: float = 0.7,
    min_fraction: float = 0.5,
    warmup_fraction: float = 0.1,
    min_rows: int = 3,
) -> list[Finding]:
    """At least ``dead_share`` of a ReLU layer's units output 0 on the whole batch, on at
    least ``min_fraction`` of the sampled steps after warm-up.

    Args:
        dead_share: share of a layer's units that are dead (AUTOTRAINER / DeepDiagnosis: 0.7).
        min_fraction: share of the sampled steps on which it holds.
        warmup_fraction: the first share of the run is not judged.
        min_rows: sampled steps needed.
    """
    df, layers = _hot_layers(run, "dead_units", dead_share, min_fraction, warmup_fraction, min_rows)
    if not layers:
        return []
    tl = timeline(run)
    out = [fixes.leaky_relu(layers), lr_fix(run, tl, None)]
    thresholds = {"dead_share": dead_share, "min_fraction": min_fraction}
    return [
        _finding("dead-units", run, df, layers, dead_share, "of the units dead", out, thresholds)
    ]


@rule("saturation", requires=("saturation",))
def saturation(
    run: Run,
    *,
    share: float = 0.5,
    min_fraction: float = 0.5,
    warmup_fraction: float = 0.1,
    min_rows: int = 3,
) -> list[Finding]:
    """At least ``share`` of a sigmoid / tanh layer's inputs lie beyond +-5 on at least
    ``min_fraction`` of the sampled steps after warm-up.

    Args:
        share: share of the inputs in the flat region (|x| > 5: DeepDiagnosis).
        min_fraction: share of the sampled steps on which it holds.
        warmup_fraction: the first share of the run is not judged.
        min_rows: sampled steps needed.
    """
    df, layers = _hot_layers(run, "saturation", share, min_fraction, warmup_fraction, min_rows)
    if not layers:
        return []
    thresholds = {"share": share, "min_fraction": min_fraction}
    # the scale first (an init too large is the usual cause), then the activation itself
    out = [fixes.xavier_init(layers), fixes.replace_activation(layers)]
    return [
        _finding("saturation", run, df, layers, share, "of the inputs saturated", out, thresholds)
    ]
