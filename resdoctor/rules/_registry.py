"""The rule registry: built-in rules, ``@rule``-decorated user rules and entry points."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from resdoctor.findings import Finding
from resdoctor.runfile.run import Run

ENTRY_POINT_GROUP = "resdoctor.rules"
RuleFn = Callable[..., "list[Finding] | Finding | None"]


@dataclass(frozen=True)
class Rule:
    """A pure function of a ``Run`` returning findings, with its documented thresholds.

    Attributes:
        code: the finding code it emits; also its name in ``--set code.param=value``.
        fn: ``fn(run, *, threshold=default, ...) -> list[Finding]``.
        requires: signals it needs; ``"a|b"`` means either, ``"scalar:loss"`` a logged scalar.
    """

    code: str
    fn: RuleFn
    requires: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """Keyword-only parameters and their defaults: the tunable thresholds."""
        params = inspect.signature(self.fn).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
        }

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join((inspect.getdoc(self.fn) or "").split("\n\n", 1)[0].split())

    def missing(self, run: Run) -> list[str]:
        """The requirements ``run`` does not meet (empty: the rule can run)."""
        return [req for req in self.requires if not any(_has(run, alt) for alt in req.split("|"))]

    def __call__(self, run: Run, **thresholds: Any) -> list[Finding]:
        out = self.fn(run, **thresholds)
        if out is None:
            return []
        return [out] if isinstance(out, Finding) else list(out)


def _has(run: Run, requirement: str) -> bool:
    if requirement.startswith("scalar:"):
        return not run.scalar(requirement[7:]).empty
    return run.has(requirement)


class Registry:
    """Rules by code, in registration order."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._entry_points_loaded = False
        self.load_errors: list[str] = []

    def add(self, rule: Rule, replace: bool = False) -> Rule:
        if rule.code in self._rules and not replace and self._rules[rule.code].fn is not rule.fn:
            raise ValueError(
                f"a rule for {rule.code!r} is already registered (pass replace=True to override it)"
            )
        self._rules[rule.code] = rule
        return rule

    def remove(self, code: str) -> None:
        self._rules.pop(code, None)

    def get(self, code: str) -> Rule | None:
        self.load_entry_points()
        return self._rules.get(code)

    def __iter__(self) -> Iterator[Rule]:
        self.load_entry_points()
        return iter(list(self._rules.values()))

    def __contains__(self, code: object) -> bool:
        return self.get(str(code)) is not None

    def load_entry_points(self) -> None:
        """Import the ``resdoctor.rules`` entry points once; failures become notes."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not stop analysis
                self.load_errors.append(f"rule plug-in {ep.name!r} failed to load: {e}")
                continue
            if isinstance(obj, Rule):
                self.add(obj, replace=True)
            elif callable(obj) and not any(r.fn is obj for r in self._rules.values()):
                self.add(Rule(ep.name, obj), replace=True)


registry = Registry()


def rule(
    code: str, *, requires: tuple[str, ...] | list[str] = (), replace: bool = False
) -> Callable[[RuleFn], RuleFn]:
    """Register a rule function for finding code ``code``.

    Example::

        @resdoctor.rules.rule("my-check", requires=("grad_norm",))
        def my_check(run, *, limit: float = 3.0) -> list[Finding]: ...
    """

    def decorate(fn: RuleFn) -> RuleFn:
        registry.add(Rule(code, fn, tuple(requires)), replace=replace)
        return fn

    return decorate
