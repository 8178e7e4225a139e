"""Sensors compute numbers on the device; they never register hooks or write files."""

from resdoctor.sensors.grad_norm import GradNorm
from resdoctor.sensors.smoothing import Smoothing
from resdoctor.sensors.update_ratio import UpdateRatio

__all__ = ["GradNorm", "Smoothing", "UpdateRatio"]
