"""A callback for benchmarks/startup.py: print the wall clock at the end of the first training step."""

import time

import lightning as L

from cnnkit import CALLBACKS


@CALLBACKS.register("first_step_clock", description="prints the time of the first training step's end (benchmarks)")
class FirstStepClock(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            print(f"FIRST_STEP_END {time.time():.6f}", flush=True)
            trainer.should_stop = True
