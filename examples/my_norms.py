from torch import nn

from cnnkit import NORMS, NormScheme


@NORMS.register("instance_pre", description="InstanceNorm before the activation (per-sample statistics)")
class InstanceNormPre(NormScheme):
    order = "pre"  # conv → norm → act; "post" puts it after the activation

    def make(self, num_features: int, dim: int) -> nn.Module:
        return nn.InstanceNorm2d(num_features, affine=True) if dim == 2 else nn.LayerNorm(num_features)
