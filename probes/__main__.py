"""``python -m probes list | run NAME | label NAME | eval [--fast] [--verify-fixes] [--json]``."""

from probes.cli import standalone

standalone()(prog_name="python -m probes")
