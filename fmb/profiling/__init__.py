"""Measure a model: params, FLOPs, latency, memory — in total and per stage.

measure.py   how each number is measured (FlopCounterMode, benchmark.Timer, saved tensors)
profile.py   `profile_model`: one model in total and per stage (result keys documented there)
compare.py   `compare_blocks`: every stage as MBConv and as Fused-MBConv, timed both ways
report.py    what `fmb profile` and `fmb models` print and write: tables, JSON, plot
"""
from fmb.profiling.compare import compare_blocks
from fmb.profiling.measure import count_macs, count_macs_per_stage, count_params
from fmb.profiling.profile import profile_model

__all__ = ["compare_blocks", "count_macs", "count_macs_per_stage", "count_params", "profile_model"]
