"""Reports: the findings of every rule on one run (``Report``), and what changed between runs."""

from resdoctor.report.analysis import Report, analyze

__all__ = ["Report", "analyze"]
