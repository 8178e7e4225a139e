"""Adapters that carry resdoctor into other tools; each imports its tool lazily.

- ``resdoctor.integrations.wandb``: ``WandbLogger`` (``resdoctor.watch(..., wandb=True)``) and
  ``attach_report`` (``resdoctor analyze RUN --wandb``); needs ``pip install resdoctor[wandb]``.

Importing this package imports no third-party tool.
"""

__all__: list[str] = []
