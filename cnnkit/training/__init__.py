"""Training and evaluating one run: the LightningModule, the trainer, optimizers, callbacks, loggers."""
