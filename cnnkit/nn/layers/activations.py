"""Activations by name; each entry builds a fresh module."""

from torch import nn

from cnnkit.registry import ACTIVATIONS

ACTIVATIONS.register("relu", nn.ReLU, description="max(0, x)")
ACTIVATIONS.register("sigmoid", nn.Sigmoid, description="1 / (1 + e^-x): saturates, the case BN placement matters for")
ACTIVATIONS.register("tanh", nn.Tanh, description="hyperbolic tangent")
ACTIVATIONS.register("gelu", nn.GELU, description="Gaussian error linear unit")
ACTIVATIONS.register("identity", nn.Identity, aliases=("linear",), description="no activation")
