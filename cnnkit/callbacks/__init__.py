"""Callbacks a config can add by name (``callbacks: [{name: early_stopping, patience: 5}]``).

Lightning's own are declared lazily, so ``cnnkit list`` does not import Lightning.
"""

from ..registry import CALLBACKS

CALLBACKS.register_lazy("early_stopping", "lightning.pytorch.callbacks:EarlyStopping",
                        "Lightning's EarlyStopping (monitor, patience, mode)")
CALLBACKS.register_lazy("lr_monitor", "lightning.pytorch.callbacks:LearningRateMonitor",
                        "Lightning's LearningRateMonitor: logs the learning rate")
CALLBACKS.register_lazy("model_checkpoint", "lightning.pytorch.callbacks:ModelCheckpoint",
                        "an extra Lightning ModelCheckpoint (the run's own is configured under checkpoint:)")
CALLBACKS.register_lazy("device_stats", "lightning.pytorch.callbacks:DeviceStatsMonitor",
                        "Lightning's DeviceStatsMonitor: accelerator utilization and memory")

# cnnkit's analysis callbacks (the course experiments), declared lazily for the same reason.
CALLBACKS.register_lazy("precise_bn", "cnnkit.callbacks.precise_bn:PreciseBN",
                        "exact BN population statistics over N training batches before validation/test")
CALLBACKS.register_lazy("eval_modes", "cnnkit.callbacks.eval_modes:EvalModes",
                        "after test: accuracy with running / batch (at chosen eval batch sizes) / precise BN stats")
CALLBACKS.register_lazy("activation_percentiles", "cnnkit.callbacks.activation_stats:ActivationPercentiles",
                        "15/50/85th percentiles of a unit's pre-activation input over training")
CALLBACKS.register_lazy("hessian_lr", "cnnkit.callbacks.surface:HessianLR",
                        "Hessian at the start: condition number, and lr = factor * 2/lambda_max")
CALLBACKS.register_lazy("loss_surface", "cnnkit.callbacks.surface:LossSurface",
                        "weight path and loss grid of a two-parameter model, for contour plots")
CALLBACKS.register_lazy("landscape", "cnnkit.callbacks.landscape:LandscapeProbes",
                        "loss range, gradient predictiveness and beta-smoothness along the gradient every N steps")
