"""Measure a model: params, FLOPs, latency, memory — in total and per stage.

`profile_model` is the entry point (`fmb profile` calls it); its result keys are listed in
fmb/profiling/profile.py.
"""
from fmb.profiling.compare import compare_blocks
from fmb.profiling.flops import count_macs, count_macs_per_stage, count_params
from fmb.profiling.profile import profile_model

__all__ = ["compare_blocks", "count_macs", "count_macs_per_stage", "count_params", "profile_model"]
