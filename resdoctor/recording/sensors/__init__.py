"""Sensors compute numbers on the device; they never register hooks or write files.

Each declares what it needs and when (``needs.Needs``); the recorder places the hooks and calls
it. Results are 0-d tensors pooled in the step's segment (one transfer per step).

| sensor | needs | signals |
|---|---|---|
| ``NonFinite`` | module inputs/outputs, leaf ops' input gradients | non-finite onsets |
| ``SiteMagnitude`` | site operands | skip/branch/stream norm, branch ratio |
| ``GradShare`` | site operands (then their autograd nodes) | grad_branch_share |
| ``Smoothing`` | site operands, or repeated layers' outputs | smoothing, smoothing_energy |
| ``GradNorm`` | every gradient after backward | grad_norm (+ NaN/Inf check) |
| ``UpdateRatio`` | parameters around optimizer.step() | update_ratio, param_norm |
| ``Units`` | ReLU outputs, sigmoid/tanh inputs (sampled) | dead_units, saturation |
"""

from resdoctor.recording.sensors.grad_norm import GradNorm
from resdoctor.recording.sensors.grad_share import GradShare
from resdoctor.recording.sensors.needs import Needs, every
from resdoctor.recording.sensors.nonfinite import FINITE_PRESERVING, NonFinite
from resdoctor.recording.sensors.site_magnitude import SiteMagnitude
from resdoctor.recording.sensors.smoothing import Smoothing
from resdoctor.recording.sensors.units import Units
from resdoctor.recording.sensors.update_ratio import UpdateRatio

__all__ = [
    "FINITE_PRESERVING",
    "GradNorm",
    "GradShare",
    "Needs",
    "NonFinite",
    "SiteMagnitude",
    "Smoothing",
    "Units",
    "UpdateRatio",
    "every",
]
