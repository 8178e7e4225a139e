"""What a sensor needs and when: the recorder reads these to decide which hooks to place and
on which steps to call each sensor. A schedule is just ``Callable[[int], bool]`` of the step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

Need = Literal[
    "module_io",  # a module's inputs and outputs in the forward pass
    "input_grads",  # the gradient reaching a module's inputs
    "site_operands",  # skip, branch (and sum) of a residual addition as they arrive
    "layer_output",  # the output of each repeated layer (models without residual sites)
    "gradients",  # every parameter's gradient once backward has finished
    "optimizer_step",  # parameters just before and after optimizer.step()
]
Schedule = Callable[[int], bool]


def every(n: int) -> Schedule:
    """Steps 0, n, 2n, ...; never when n <= 0."""
    return lambda step: n > 0 and step % n == 0


def always(step: int) -> bool:
    return True


@dataclass(frozen=True)
class Needs:
    """A sensor's declaration: what it reads, and on which steps."""

    what: frozenset[Need]
    when: Schedule = always


class Hooks(Protocol):
    """What the recorder lends a sensor that must follow a tensor into backward: the sensor
    never registers a hook itself, so every handle stays with the recorder's ``HookSet``."""

    def tensor(self, t: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None: ...

    def node(self, node: Any, fn: Callable[..., Any]) -> None: ...
