"""Small residual models that ship with resdoctor: used by the demo, the probes and the tests."""

from resdoctor.models.mlp import MLPBlock, ResidualMLP
from resdoctor.models.resnet import BasicBlock, Bottleneck, PreActBlock, PreActResNet, ResNet
from resdoctor.models.transformer import TinyTransformer, TransformerBlock

__all__ = [
    "BasicBlock",
    "MLPBlock",
    "Bottleneck",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "ResidualMLP",
    "TinyTransformer",
    "TransformerBlock",
]
