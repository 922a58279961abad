"""`FollowLoad`: with `run.threads=follow_load`, torch's CPU threads follow other processes' load.

The start decision takes a short sample of what other processes use (fmb/device.py). Jobs
start and end during a run, so at each epoch after the first the threads are decided again
from the 1-minute load average, less the load this process adds itself (about one per
thread; a sample here would count this run's own loader workers as others); a change is
printed once. Off by default: a thread count that changes with the neighbours changes the
float sums, so the same seed would give other numbers on a busy machine.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from fmb.device import Machine
from fmb.training.auto import free_cores
from fmb.utils import rank_zero_print


class FollowLoad(Callback):
    def __init__(self, machine: Machine):
        self.machine = machine

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            return  # decided at start, from the same load
        current, cores, load = torch.get_num_threads(), self.machine.cores, self.machine.load_average()
        free = free_cores(cores, load - current)  # this run's own threads keep the load at ~current
        if free != current:
            torch.set_num_threads(free)
            rank_zero_print(f"  threads: {current} → {free} (epoch {trainer.current_epoch}: load {load:.1f}, "
                            f"{load - current:.1f} of it other processes, {cores} cores)")
