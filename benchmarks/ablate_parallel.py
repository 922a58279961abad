"""Wall time of one tiny ablation study run sequentially against `ablate.jobs=2`.

The same 4-trial study (configs/ablate/digits_quick.yaml: EfficientNetV2-B0 at width/depth
0.25, 32 px, digits, on CPU; two placements × two seeds, real `fmb train` trials) runs into a
fresh directory each time, the contenders alternating, so a change in the shared machine's load
hits both; medians are compared. With two trials at once each gets half the cores
(OMP_NUM_THREADS), so the ratio is bounded by the core count and by how much of a trial is
single-threaded start-up and Python overhead (which two trials overlap) rather than
multi-threaded compute (which they split).

    .venv/bin/python benchmarks/ablate_parallel.py --repeats 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESET = Path(__file__).resolve().parents[1] / "configs" / "ablate" / "digits_quick.yaml"


def run_study(jobs: int, args) -> float:
    from rich.console import Console

    from fmb.ablation import run_ablation

    overrides = [f"ablate.jobs={jobs}", f"trainer.max_epochs={args.epochs}", "ablate.profile.warmup=0",
                 "ablate.profile.iters=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_ablation([PRESET], overrides, placements=args.placements, seeds=args.seeds,
                              out=Path(tmp) / "study", console=Console(file=open(os.devnull, "w")))
        elapsed = time.perf_counter() - start
    if result.exit_code:
        raise SystemExit(f"study failed: {result.failed}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--placements", default="MMMMMM,FFFFFF")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    times = {1: [], 2: []}
    for i in range(args.repeats):
        for jobs in ((1, 2) if i % 2 == 0 else (2, 1)):  # alternate which goes first
            times[jobs].append(run_study(jobs, args))
            print(f"repeat {i + 1}: ablate.jobs={jobs}: {times[jobs][-1]:.1f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    seq, par = statistics.median(times[1]), statistics.median(times[2])
    print(f"sequential {seq:.1f} s, ablate.jobs=2 {par:.1f} s (medians of {args.repeats}): "
          f"{seq / par:.2f}× faster in wall time; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
