"""Weight initializations by name, applied to every conv and linear layer of a backbone.

Norm layers keep γ = 1 and β = 0; biases are set to zero by every scheme except ``default``.
"""

from __future__ import annotations

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.registry import INITS

WEIGHTED = (nn.Conv2d, nn.Linear)


class Init:
    """Base: apply ``init_weight`` to each conv/linear weight and zero its bias."""

    def __call__(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, WEIGHTED):
                self.init_weight(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def init_weight(self, weight) -> None:
        raise NotImplementedError


@INITS.register("default", description="PyTorch's own initialization (Kaiming-uniform with a=sqrt(5))")
class DefaultInit(Init):
    def __call__(self, model: nn.Module) -> None:
        pass


@INITS.register("kaiming", aliases=("he",), description="He et al. 2015 normal init, for ReLU networks")
class KaimingInit(Init):
    def __init__(self, mode: str = "fan_in", nonlinearity: str = "relu"):
        self.mode, self.nonlinearity = mode, nonlinearity

    def init_weight(self, weight) -> None:
        nn.init.kaiming_normal_(weight, mode=self.mode, nonlinearity=self.nonlinearity)


@INITS.register("xavier", aliases=("glorot",), description="Glorot & Bengio 2010 uniform init (Santurkar's VGG)")
class XavierInit(Init):
    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def init_weight(self, weight) -> None:
        nn.init.xavier_uniform_(weight, gain=self.gain)


@INITS.register(
    "normal", aliases=("gaussian",), description="N(0, std²) weights: small Gaussian init (Ioffe & Szegedy's MLP)"
)
class NormalInit(Init):
    def __init__(self, std: float = 0.01):
        if std <= 0:
            raise ConfigError(f"normal init std must be > 0, got {std}")
        self.std = std

    def init_weight(self, weight) -> None:
        nn.init.normal_(weight, mean=0.0, std=self.std)


@INITS.register("constant", aliases=("zeros",), description="every weight set to value (default 0): a fixed start")
class ConstantInit(Init):
    def __init__(self, value: float = 0.0):
        self.value = value

    def init_weight(self, weight) -> None:
        nn.init.constant_(weight, self.value)
