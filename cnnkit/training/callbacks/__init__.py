"""Callbacks a config can add by name (``callbacks: [{name: early_stopping, patience: 5}]``).

Lightning's own are declared lazily, so ``cnnkit list`` does not import Lightning.
"""

from cnnkit.registry import CALLBACKS

CALLBACKS.register_lazy(
    "early_stopping", "lightning.pytorch.callbacks:EarlyStopping", "Lightning's EarlyStopping (monitor, patience, mode)"
)
CALLBACKS.register_lazy(
    "lr_monitor",
    "lightning.pytorch.callbacks:LearningRateMonitor",
    "Lightning's LearningRateMonitor: logs the learning rate",
)
CALLBACKS.register_lazy(
    "model_checkpoint",
    "lightning.pytorch.callbacks:ModelCheckpoint",
    "an extra Lightning ModelCheckpoint (the run's own is configured under checkpoint:)",
)
CALLBACKS.register_lazy(
    "device_stats",
    "lightning.pytorch.callbacks:DeviceStatsMonitor",
    "Lightning's DeviceStatsMonitor: accelerator utilization and memory",
)

CALLBACKS.register_lazy(
    "precise_bn",
    "cnnkit.training.callbacks.precise_bn:PreciseBN",
    "exact BN population statistics over N training batches before validation/test",
)
