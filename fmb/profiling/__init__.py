"""Measure a model: params, FLOPs, latency, memory — in total and per stage."""
