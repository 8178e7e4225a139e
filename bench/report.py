"""Render benchmark JSON results as Markdown tables; regenerate the README's from committed ones.

    python -m bench.report bench/results/overhead.json bench/results/scale.json   # print
    python -m bench.report --readme          # rewrite README's tables from bench/results/*.json
    python -m bench.report --readme --check  # exit 1 when the README differs from the JSON,
                                             # or the JSON was measured on other code than HEAD

The README's tables sit between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers,
NAME being ``overhead``, ``scale`` (the million-step run) or ``hostpath`` (``bench.scale --mode
consume``: the recorder's full host path); each is rendered from the newest committed
``bench/results/NAME-*.json`` (newest by the commit it records).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("plain", "resdoctor", "resdoctor-all", "wandb", "anomaly", "naive")
HEADS = {
    "plain": "plain twin (noise floor)",
    "resdoctor": "resdoctor (defaults)",
    "resdoctor-all": "resdoctor (everything)",
    "wandb": "wandb.watch gradients",
    "anomaly": "detect_anomaly",
    "naive": "naive `.item()` hooks",
}


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m['cpu']} ({m['cpu_count']} cores), {m['torch_threads']} torch thread(s){gpu}; "
        f"torch {m['torch']}, Python {m['python']}, resdoctor {m['resdoctor']} "
        f"@ {m['commit']}; load average at start {m.get('loadavg_start')}, "
        f"at end {m.get('loadavg_end')}"
    )


def overhead(report: dict[str, Any]) -> str:
    """The ratio table: one row per model and clock, plain's ms/step, then each ratio (median
    over rounds, with the range over rounds); then the median over all paired steps with its
    95% bootstrap interval (how precisely the machine's noise allowed measuring it)."""
    cols = [c for c in COLUMNS if any(c in r for r in report["models"].values())]
    if report["settings"].get("unpaired"):
        cols.remove("plain")  # unpaired, plain is the reference: always 1.00x
    lines = [
        "| model | clock | plain ms/step | " + " | ".join(HEADS[c] for c in cols) + " |",
        "|---|---|---:|" + "---:|" * len(cols),
    ]
    for model, res in report["models"].items():
        for clock, key, ms in (
            ("wall", "ratio", "median_step_ms"),
            ("CPU", "cpu_ratio", "median_step_cpu_ms"),
        ):
            cells = [
                f"{res[c][key]:.2f}x ({res[c][key + '_min']:.2f}-{res[c][key + '_max']:.2f})"
                if c in res
                else "-"
                for c in cols
            ]
            lines.append(
                f"| {report['titles'].get(model, model)} | {clock} | "
                f"{res['plain'][ms]:.0f} | " + " | ".join(cells) + " |"
            )
        if all("step_ratio_ci95" in res[c] for c in cols):
            cells = [
                f"{res[c]['step_ratio']:.3f}x ({res[c]['step_ratio_ci95'][0]:.3f}-"
                f"{res[c]['step_ratio_ci95'][1]:.3f})"
                for c in cols
            ]
            lines.append(
                f"| {report['titles'].get(model, model)} | wall, all steps pooled "
                f"(95% CI) | | " + " | ".join(cells) + " |"
            )
    s = report["settings"]
    paired = "" if s.get("unpaired") else ", each paired with a step of a plain twin model"
    lines += [
        "",
        f"Command: `{report['command'].strip()}` ({s['rounds']} rounds x "
        f"{s['steps']} timed steps per configuration, alternated{paired}).",
        f"Machine: {machine_line(report['machine'])}.",
    ]
    return "\n".join(lines)


def scale(result: dict[str, Any]) -> str:
    """The scale table: recording memory, file size, write, load and analyze times."""
    rec, f = result["recording"], result["run_file"]
    rows = [
        ("steps x blocks", f"{result['steps']:,} x {result['blocks']} ({result['mode']} mode)"),
        (
            "host time of recording",
            f"{rec['host_us_per_step']:.0f} us/step"
            + (
                " (the recorder's full host path: pack, transfer, unpack, journal)"
                if result["mode"] == "consume"
                else " (fast mode: rows appended straight into the series, a lower bound)"
            ),
        ),
        (
            "memory of recording",
            f"RSS +{rec['rss_delta_mb']:.0f} MB (series arrays {rec['series_arrays_mb']:.0f} MB)",
        ),
        ("run file", f"{f['file_mb']:.1f} MB (target < {result['targets']['file_mb']:.0f} MB)"),
        (
            "one flush (state + write)",
            f"{f['state_s'] + f['write_s']:.2f} s "
            f"(= {f['flush_ms_per_step_at_default']:.2f} ms/step at "
            f"flush_every=500)",
        ),
        (
            "`resdoctor.load`",
            f"{f['load_s']:.2f} s ({f['load_all_series_s']:.2f} s with every "
            f"series as a DataFrame)",
        ),
        (
            "`resdoctor.analyze`",
            f"{f['analyze_s']:.2f} s in-process, {f['cli_analyze_s']:.2f} s "
            f"for the CLI with imports (target < "
            f"{result['targets']['analyze_s']:.0f} s)",
        ),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    lines += [
        "",
        f"Command: `{result['command'].strip()}`.",
        f"Machine: {machine_line(result['machine'])}.",
    ]
    return "\n".join(lines)


RESULTS = Path("bench/results")
README = Path("README.md")
# code whose change makes a committed benchmark stale
MEASURED = (
    "resdoctor",
    "bench/_workloads.py",
    "bench/_configs.py",
    "bench/overhead.py",
    "bench/scale.py",
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout


def newest(name: str) -> Path | None:
    """The committed ``bench/results/NAME-*.json`` measured at the latest commit."""
    files = sorted(RESULTS.glob(f"{name}-*.json"))
    if not files:
        return None

    def age(path: Path) -> int:
        commit = json.loads(path.read_text())["machine"].get("commit", "")
        out = _git("rev-list", "--count", f"{commit}..HEAD").strip()
        return int(out) if out.isdigit() else 1 << 30

    return min(files, key=age)


def stale(path: Path) -> str:
    """Why the result no longer describes HEAD's code ('' when it does)."""
    commit = json.loads(path.read_text())["machine"].get("commit", "")
    if not commit or commit == "unknown":
        return f"{path} records no commit"
    if commit.endswith("+dirty"):
        return f"{path} was measured on uncommitted code ({commit})"
    if not _git("cat-file", "-t", commit).strip():
        return f"{path} records commit {commit}, which this clone does not have"
    changed = _git("diff", "--name-only", commit, "HEAD", "--", *MEASURED).split()
    return (
        f"{path} was measured at {commit}; changed since: {', '.join(changed[:5])}"
        if changed
        else ""
    )


def render_readme(text: str) -> tuple[str, list[str]]:
    """README text with every marked table re-rendered; and the problems found."""
    problems: list[str] = []
    for name in ("overhead", "scale", "hostpath"):
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            continue
        path = newest(name)
        if path is None:
            problems.append(f"no committed bench/results/{name}-*.json")
            continue
        data = json.loads(path.read_text())
        table = (overhead(data) if name == "overhead" else scale(data)) + f"\n\nFrom `{path}`.\n"
        text = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(2), text)
        if why := stale(path):
            problems.append(why)
    return text, problems


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if "--readme" in args:
        before = README.read_text()
        after, problems = render_readme(before)
        if "--check" in args:
            if after != before:
                problems.insert(0, "README's benchmark tables differ from the committed JSON")
            for p in problems:
                print(f"bench.report: {p}", file=sys.stderr)
            return 1 if problems else 0
        README.write_text(after)
        for p in problems:
            print(f"bench.report: {p}", file=sys.stderr)
        return 0
    paths = args
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in paths:
        data = json.loads(Path(path).read_text())
        print(overhead(data) if "models" in data else scale(data))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
