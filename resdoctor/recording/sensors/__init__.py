"""Sensors compute numbers on the device; they never register hooks or write files."""

from resdoctor.recording.sensors.grad_norm import GradNorm
from resdoctor.recording.sensors.smoothing import Smoothing
from resdoctor.recording.sensors.update_ratio import UpdateRatio

__all__ = ["GradNorm", "Smoothing", "UpdateRatio"]
