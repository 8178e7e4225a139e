"""Diagnosis: the findings of one run linked into a causal chain, its root cause, a story in
one or two sentences, and one fix plan (DESIGN.md section 6).

How the chain is built. ``CAUSES`` lists which condition can produce which (growth of the
stream makes gradients explode, exploding gradients make the loss diverge, a diverging loss
goes non-finite, dominant branches wash positions together...). Finding A *precedes* B when A
can cause B and A began no later than B (``ONSET_SLACK``: over-smoothing is sampled, a
gradient surge is detected late by its 10x threshold). The root cause is the most upstream
finding: when the run failed (a critical NaN/Inf or loss divergence), an ancestor of that
failure with no cause of its own, else the failure itself; when it did not, the finding that
explains most of the others. A NaN made by the input batch or the loss computation is its
own root: no state of the model causes a bad batch.

The plan takes the fixes of the root cause first, then those of its consequences in order,
then the rest, each fix code once with the parameters of its first occurrence; every
finding's fixes are rewritten to those same objects, so a report never holds two values for
one parameter (one clip norm, one LR factor, one branch scale, one warm-up length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from resdoctor.findings import SEVERITY_RANK, Finding, Fix

FAILURES = ("nonfinite", "loss-divergence")
# cause -> conditions it can produce (the ``graph`` architecture reverses vanishing/smoothing:
# message passing averages neighbours first, and gradients vanish through the averaged layers)
CAUSES: dict[str, tuple[str, ...]] = {
    "activation-growth": (
        "exploding-gradients",
        "loss-divergence",
        "nonfinite",
        "precision-overflow",
    ),
    "precision-overflow": ("nonfinite",),
    "exploding-gradients": ("loss-divergence", "nonfinite", "grad-spike", "loss-spike"),
    "loss-divergence": ("nonfinite",),
    "branch-dominance": ("oversmoothing", "vanishing-gradients", "activation-growth"),
    "vanishing-gradients": ("oversmoothing", "stalled-training"),
    "grad-spike": ("loss-spike", "loss-divergence", "nonfinite"),
    "loss-spike": ("loss-divergence", "nonfinite"),
    "saturation": ("vanishing-gradients", "stalled-training"),
    "dead-units": ("stalled-training",),  # -> dead-branch: plausible, not yet probed
    "dead-branch": ("stalled-training",),
    "oversmoothing": ("stalled-training",),
}
GRAPH_CAUSES: dict[str, tuple[str, ...]] = {
    **CAUSES,
    "vanishing-gradients": ("stalled-training",),
    "oversmoothing": (
        "vanishing-gradients",
        "exploding-gradients",
        "activation-growth",
        "stalled-training",
    ),
}
# steps a cause's detected onset may come after its effect's: over-smoothing is sampled every
# smoothing_every (10) steps; a gradient surge is detected at 10x its trailing median, while
# the loss divergence it drives is seen on a rolling median as soon as it clears the noise
ONSET_SLACK = {"oversmoothing": 10, "exploding-gradients": 10}
OWN_ORIGIN = ("input", "loss")  # a NaN made here has no cause inside the model


@dataclass(frozen=True)
class Diagnosis:
    """What ``Report`` says first: the root cause, the story, the plan, and the findings with
    their links (``preceded_by`` / ``leads_to``) in the order to read them."""

    root_cause: Finding | None
    story: str
    plan: tuple[Fix, ...]
    findings: tuple[Finding, ...]  # root cause, its consequences, then the rest worst first
    chain: tuple[Finding, ...]  # root cause and its consequences, by onset


def diagnose(
    findings: Sequence[Finding], architecture: str = "mlp", steps: int | None = None
) -> Diagnosis:
    """Link ``findings`` (info findings are context, never a cause) into a diagnosis."""
    causes = GRAPH_CAUSES if architecture == "graph" else CAUSES
    real = [f for f in findings if f.severity != "info"]
    edges = {(id(a), id(b)) for a in real for b in real if a is not b and _can_cause(causes, a, b)}
    parents = {id(f): [a for a in real if (id(a), id(f)) in edges] for f in real}
    children = {id(f): [b for b in real if (id(f), id(b)) in edges] for f in real}
    root = _root(real, parents, children)
    chain = _descendants(root, children) if root is not None else []
    linked = [
        _linked(f, parents[id(f)], children[id(f)]) if id(f) in parents else f for f in findings
    ]
    by_id = {id(f): g for f, g in zip(findings, linked)}
    chain_out = [by_id[id(f)] for f in chain]
    rest = sorted(
        (by_id[id(f)] for f in findings if all(f is not c for c in chain)),
        key=lambda f: (-SEVERITY_RANK[f.severity], _step(f), f.code),
    )
    ordered = [*chain_out, *rest]
    plan = _plan(ordered)
    final = tuple(_with_plan(f, plan) for f in ordered)
    root_out = final[0] if root is not None else None
    return Diagnosis(
        root_out,
        story(final[: len(chain_out)], steps) if root is not None else "",
        tuple(plan.values()),
        final,
        final[: len(chain_out)],
    )


def _step(f: Finding) -> int:
    return f.step if f.step is not None else 1 << 62


def _can_cause(causes: dict[str, tuple[str, ...]], a: Finding, b: Finding) -> bool:
    if b.code not in causes.get(a.code, ()):
        return False
    if b.code == "nonfinite" and b.phase in OWN_ORIGIN:
        return False
    if a.step is None or b.step is None:
        return True
    return a.step <= b.step + ONSET_SLACK.get(a.code, 0)


def _root(
    real: list[Finding], parents: dict[int, list[Finding]], children: dict[int, list[Finding]]
) -> Finding | None:
    if not real:
        return None
    failures = [f for f in real if f.code in FAILURES and f.severity == "critical"]
    fail = None
    if failures:  # the story is the failure's: its most upstream ancestor
        fail = min(failures, key=lambda f: (f.code != "nonfinite", _step(f)))
        candidates = [a for a in _ancestors(fail, parents) if not parents[id(a)]] or [fail]
    else:
        candidates = [f for f in real if not parents[id(f)]] or real

    def weight(f: Finding) -> tuple[int, int, int, int]:
        # between independent causes that explain as much, the one at the module where the
        # failure was made (an fp16 overflow in `head` before a NaN made in `head`) comes
        # before a louder one elsewhere
        elsewhere = int(fail is None or not f.location or f.location != fail.location)
        return (-len(_descendants(f, children)), elsewhere, -SEVERITY_RANK[f.severity], _step(f))

    return min(candidates, key=weight)


def _reach(f: Finding, links: dict[int, list[Finding]]) -> dict[int, Finding]:
    """Every finding reached from ``f`` along ``links`` (parents or children), ``f`` excluded."""
    seen: dict[int, Finding] = {}
    todo = list(links[id(f)])
    while todo:
        g = todo.pop()
        if id(g) not in seen and g is not f:
            seen[id(g)] = g
            todo.extend(links[id(g)])
    return seen


def _ancestors(f: Finding, parents: dict[int, list[Finding]]) -> list[Finding]:
    return list(_reach(f, parents).values())


def _descendants(f: Finding, children: dict[int, list[Finding]]) -> list[Finding]:
    """``f`` and everything it leads to, by onset (``f`` first)."""
    rest = sorted(_reach(f, children).values(), key=lambda g: (_step(g), g.code))
    return [f, *rest]


def _ref(f: Finding, other: Finding) -> dict[str, Any]:
    lead = None if f.step is None or other.step is None else abs(other.step - f.step)
    return {"code": other.code, "step": other.step, "location": other.location, "lead_steps": lead}


def _linked(f: Finding, before: list[Finding], after: list[Finding]) -> Finding:
    if not before and not after:
        return f
    return replace(
        f,
        preceded_by=tuple(_ref(f, a) for a in sorted(before, key=_step)),
        leads_to=tuple(_ref(f, b) for b in sorted(after, key=_step)),
    )


def _plan(ordered: list[Finding]) -> dict[str, Fix]:
    plan: dict[str, Fix] = {}
    for f in ordered:
        if f.severity == "info":
            continue
        for fix in f.fixes:
            plan.setdefault(fix.code, fix)
    return plan


def _with_plan(f: Finding, plan: dict[str, Fix]) -> Finding:
    fixes = tuple(plan.get(x.code, x) for x in f.fixes)
    return f if fixes == f.fixes else replace(f, fixes=fixes)


def _where(f: Finding) -> str:
    bits = []
    if f.location:
        bits.append(f"in {f.location}")
    if f.phase and f.code == "nonfinite":
        bits.append(f"({f.phase})")
    return " ".join(bits)


def story(chain: Sequence[Finding], steps: int | None = None) -> str:
    """One or two sentences: the root cause (what, where, since when), then what it led to."""
    if not chain:
        return ""
    root = chain[0]
    when = f"from step {root.step}" if root.step is not None else "over the run"
    first = f"{root.title} {when}" + (f" {_where(root)}" if _where(root) else "") + "."
    if len(chain) == 1:
        return first

    def said(f: Finding) -> str:
        at = f" at step {f.step}" if f.step is not None else ""
        return f"{f.code}{at}" + (f" {_where(f)}" if f.location else "")

    # an effect seen before its cause was detected (a surge is detected late) goes alongside it
    along = [f for f in chain[1:] if f.step is not None and root.step and f.step < root.step]
    after = [f for f in chain[1:] if f not in along]
    parts = []
    if along:
        parts.append("It came with " + ", ".join(said(f) for f in along))
    if after:
        parts.append(("and led to " if along else "It led to ") + ", then ".join(map(said, after)))
    return f"{first} {' '.join(parts)}."
