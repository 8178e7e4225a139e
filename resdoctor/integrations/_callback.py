"""What the framework callbacks (Lightning, HF Trainer) share: option checks and safe hooks."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

from resdoctor.recording.options import Options

# watch() arguments that are not recording Options
WATCH_ONLY = (
    "scaler",
    "example_inputs",
    "example_kwargs",
    "wandb",
    "wandb_every",
    "tensorboard",
    "tensorboard_every",
    "quiet",
)


def check_options(watch_options: dict[str, Any]) -> None:
    """Fail when the callback is built, not during training, on an unknown watch option."""
    Options.from_kwargs(
        **{
            k: v
            for k, v in watch_options.items()
            if k not in WATCH_ONLY and not k.startswith("attribute_")
        }
    )


def safe_hook(framework: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a callback hook so that its errors are recorded, never raised into training."""

    def decorate(hook: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(hook)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return hook(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - never raise into the training loop
                watcher = self.watcher
                if watcher is not None:
                    watcher.context.record_error(f"{framework}.{hook.__name__}", e)
                else:
                    warnings.warn(f"resdoctor: {hook.__name__} failed: {e}", stacklevel=2)
                return None

        return wrapper

    return decorate
