"""`FollowLoad`: on CPU, torch's threads follow the other processes' load through a run.

`auto` picks the threads at start from a short sample of what other processes use now
(utils.others_busy_cores; the 1-minute load average where there is no /proc). Jobs start and
end during a run, so at each epoch after the first the threads are decided again from the
1-minute load average, less the load this process adds itself (about one per thread; a
sample here would count this run's own loader workers as others); a change is printed once.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from fmb.training import auto
from fmb.utils import rank_zero_print


class FollowLoad(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            return  # decided at start, from the same load
        current, cores, load = torch.get_num_threads(), auto.cpu_cores(), auto.cpu_load()
        free = auto.free_cores(cores, load - current)  # this run's own threads keep the load at ~current
        if free != current:
            torch.set_num_threads(free)
            rank_zero_print(f"  threads: {current} → {free} (epoch {trainer.current_epoch}: load {load:.1f}, "
                            f"{load - current:.1f} of it other processes, {cores} cores)")
