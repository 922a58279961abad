"""Block-placement ablations: which stages use Fused-MBConv, and what it costs or buys.

plan (which trials) → study (validated config + fingerprint) → runner (one subprocess per
trial) → store (results.jsonl, resume) → report (table, CSV, plots); sweep ties them together.
"""
from fmb.ablation.sweep import AblationResult, run_ablation

__all__ = ["AblationResult", "run_ablation"]
