"""A synthetic run of a million steps, 200 modules with parameters and 100 residual sites.

Built with the recorder's own ``Journal`` and ``Series`` (filled to capacity, so every series holds
the most rows a real run file can), written with ``runfile.write``. Used by the app's scale test.

    python tests/app/app_large_run.py OUT.pt    # write one, to open with streamlit run app/main.py
    python tests/app/app_large_run.py --sizes   # rows of every frame the app would draw from it
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from resdoctor.recording.journal import Journal
from resdoctor.recording.options import Options
from resdoctor.runfile import io as runfile

STEPS = 1 << 20  # 1,048,576


def large_state(
    blocks: int = 100,
    steps: int = STEPS,
    capacity: int = 4096,
    skipped: int = 20_000,
    seed: int = 0,
) -> dict:
    """Run-file state of ``blocks`` blocks (2 modules with parameters each), series at capacity."""
    rng = np.random.default_rng(seed)
    modules = [{"name": "", "type": "Net", "params": 0, "order": -1}]
    params = []
    for b in range(blocks):
        for j in (1, 2):
            name = f"blocks.{b}.fc{j}"
            modules.append({"name": name, "type": "Linear", "params": 4160, "order": 2 * b + j})
            params.append(name)
    journal = Journal(
        modules, params, capacity, 1000, {"model_class": "SyntheticNet", "rank": 0, "world_size": 1}
    )
    journal.set_sites(
        [
            {
                "name": f"blocks.{b}",
                "kind": "identity",
                "module": "Block",
                "index": b,
                "owner": f"blocks.{b}",
            }
            for b in range(blocks)
        ]
    )
    stride = steps // capacity
    for name, series in journal.series.items():
        if name == "scalars":
            series.add_columns(["grad_norm_total", "loss", "lr"])
        _fill(series, stride, capacity, rng)
    journal.steps = steps
    journal.events = [
        {
            "kind": "nonfinite",
            "step": steps - 12_345,
            "module": params[150],
            "phase": "backward",
            "rank": 0,
            "detail": {"amp_skipped": False},
        }
    ]
    journal.skipped = sorted(rng.choice(steps, skipped, replace=False).tolist())
    return journal.state(Options().to_dict())


def _fill(series, stride: int, capacity: int, rng: np.random.Generator) -> None:
    """``capacity`` rows, one per ``stride`` steps: a drifting positive signal per column."""
    n = len(series.columns)
    level = np.exp(rng.normal(0.0, 1.0, n))
    drift = rng.normal(0.0, 0.002, (capacity, n)).cumsum(axis=0)
    values = level * np.exp(drift)
    values[-5:, n // 2] = np.nan  # a measured NaN near the end
    for i in range(capacity):
        series.append(i * stride, values[i], present=np.ones(n, dtype=bool))
    len(series)  # folds the appended rows in; then the width they were spaced at
    series._stride = stride


def sizes() -> list[tuple[str, int]]:
    """(frame, rows) of what the app draws for the synthetic run (built in memory)."""
    from resdoctor.app.view import View
    from resdoctor.runfile.run import Run

    view = View(Run(large_state()))
    out = [
        (f"heatmap {s}", len(view.heatmap(s)))
        for s in ("grad_norm", "update_ratio", "branch_ratio", "stream_norm", "smoothing")
    ]
    out.append(
        (
            "lines branch_ratio, 6 sites",
            len(view.lines("branch_ratio", tuple(view.spread("branch_ratio")))),
        )
    )
    out.append(("depth profiles stream_norm, 5 steps", len(view.snapshots("stream_norm"))))
    out.append(("scalars loss, lr, grad_norm_total", len(view.scalars())))
    out.append(("skipped-step marks (20,000 skipped)", len(view.skipped())))
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--sizes"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        print(f"synthetic run: {STEPS:,} steps, 200 modules with parameters, 100 sites")
        for name, rows in sizes():
            print(f"{name:40s} {rows:>8,} rows")
    else:
        out = sys.argv[1] if len(sys.argv) > 1 else "large_run.pt"
        runfile.write(large_state(), out)
        print(out)
