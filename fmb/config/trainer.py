"""`trainer.*` passes through to `lightning.Trainer`; its keys and types are checked here, up front.

Lightning checks most of these only once training is under way (or in spawned ranks);
checking while the config loads turns them into one line before any work.
"""
from __future__ import annotations

import inspect

from fmb.errors import FmbError, nearest

# Trainer arguments fmb sets itself from its own keys.
OWNED = {"logger": "fmb logs to the run dir", "callbacks": "fmb builds them from its own keys",
         "default_root_dir": "use run.dir", "sync_batchnorm": "use model.sync_bn",
         "deterministic": "use run.deterministic"}

_FRACTION = ((int, float), "a batch count or a fraction, e.g. 10 or 0.25")
TYPES = {
    "max_epochs": ((int,), "an integer number of epochs >= 1, e.g. 10 (-1 for no limit)"),
    "min_epochs": ((int,), "an integer"), "max_steps": ((int,), "an integer number of steps (-1 for no limit)"),
    "min_steps": ((int,), "an integer"), "num_nodes": ((int,), "an integer >= 1"),
    "accumulate_grad_batches": ((int,), "an integer >= 1"), "log_every_n_steps": ((int,), "an integer >= 1"),
    "check_val_every_n_epoch": ((int,), "an integer >= 1"), "num_sanity_val_steps": ((int,), "an integer"),
    "limit_train_batches": _FRACTION, "limit_val_batches": _FRACTION, "limit_test_batches": _FRACTION,
    "val_check_interval": ((int, float), "a batch count or a fraction of an epoch"),
    "gradient_clip_val": ((int, float), "a number"),
    "fast_dev_run": ((bool, int), "true or a number of batches"),
    "devices": ((int, str, list), "a count, a list of ids, or 'auto'"),
    "precision": ((int, str), "auto (fmb picks for the hardware) or one of 32-true, 16-mixed, bf16-mixed, 64-true"),
}
AT_LEAST_ONE = ("accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch", "num_nodes")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "deepspeed", "fsdp", "single_device",
              "ddp_find_unused_parameters_true")


def _is_instance(value, types) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # YAML's true is not an epoch count
    return isinstance(value, tuple(types)) or (list in types and isinstance(value, (list, tuple)))


# Trainer arguments fmb's configs and docs use (the tests check each against lightning.Trainer):
# a trainer section of only these is checked without importing Lightning, which `fmb ablate`'s
# planning and `--print-config` would otherwise load for seconds just to read a signature.
KNOWN = frozenset(TYPES) | {"accelerator", "strategy", "enable_progress_bar", "enable_model_summary",
                            "enable_checkpointing", "gradient_clip_algorithm", "benchmark", "max_time",
                            "use_distributed_sampler", "inference_mode"}


def trainer_arguments() -> list[str]:
    """lightning.Trainer's keyword arguments."""
    import lightning

    return [p for p in inspect.signature(lightning.Trainer.__init__).parameters if p != "self"]


def check_trainer(trainer: dict) -> None:
    valid = KNOWN if set(trainer) <= KNOWN else trainer_arguments()
    for key, value in trainer.items():
        if key in OWNED:
            raise FmbError(f"trainer.{key} is set by fmb, not the config ({OWNED[key]})")
        if key not in valid:
            raise FmbError(f"unknown config key 'trainer.{key}' (not a lightning.Trainer argument)"
                           f"{nearest(key, valid)}")
        expected = TYPES.get(key)
        if expected and value is not None and not _is_instance(value, expected[0]):
            raise FmbError(f"wrong type for 'trainer.{key}': {value!r}; expected {expected[1]}")
        if isinstance(value, float) and value != value:
            raise FmbError(f"invalid trainer.{key}=nan; expected a number")
    for key in AT_LEAST_ONE:  # Lightning refuses 0 deep inside fit, as a raw exception
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise FmbError(f"invalid trainer.{key}={value}; expected {TYPES[key][1]}, e.g. trainer.{key}=1")
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise FmbError(f"invalid trainer.max_epochs={max_epochs}; expected at least 1 epoch (-1 for no limit)")
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy not in STRATEGIES:
        from lightning.pytorch.strategies import StrategyRegistry

        if strategy not in StrategyRegistry.available_strategies():
            raise FmbError(f"unknown trainer.strategy='{strategy}'; expected one of auto, ddp, ddp_spawn, fsdp, "
                           f"deepspeed{nearest(strategy, list(StrategyRegistry.available_strategies()))}")
