"""Block-placement ablations: which stages use Fused-MBConv, and what it costs or buys.

plan (which trials) → study (validated config + fingerprint) → devices (which devices each
concurrent trial gets) → runner (one subprocess per trial) or slurm (one submitit job per
trial) → store (results.jsonl, resume, safe for concurrent writers) → report (table, paired
statistics from stats, CSV, plots) and hparams (TensorBoard); sweep ties them together.
"""
from fmb.ablation.dryrun import format_plan, plan_ablation
from fmb.ablation.sweep import AblationResult, run_ablation

__all__ = ["AblationResult", "format_plan", "plan_ablation", "run_ablation"]
