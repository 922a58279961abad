#!/usr/bin/env bash
# The GPU figures in README, from the checkout root on a machine with one CUDA GPU:
#   bash benchmarks/gpu.sh            (results and logs in $OUT, default gpu-results/)
# 1. training images/s (V2-S at 128/224/300 px) and fast inference vs timm and torchvision;
# 2. the front door (`fmb train`, auto: bf16-mixed, channels_last; eager for a run this short) on the GPU;
# 3. eval and predict of its checkpoint on the GPU;
# 4. `fmb profile --compare-blocks`: MBConv vs Fused-MBConv per stage, V2-S and B4 (Table 3).
# Each step has its own time limit, so one that fails or hangs leaves the others' figures.
set -u
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT"
export COLUMNS=160 PYTHONUNBUFFERED=1
step() { echo; echo "### $*"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  timeout 150 $PY benchmarks/gpu_peers.py --resolutions 128 224 300 --batch-size 128 --json "$OUT/peers.json"
} >"$OUT/peers.log" 2>&1

step train >"$OUT/train.log"
timeout 200 $PY -m fmb train run.dir=runs/gpu-front-door >>"$OUT/train.log" 2>&1
echo "exit $?" >>"$OUT/train.log"
cp runs/gpu-front-door/summary.json "$OUT/summary.json" 2>/dev/null

CKPT=runs/gpu-front-door/checkpoints/last.ckpt
{
  step eval cuda bf16; timeout 45 $PY -m fmb eval "$CKPT" --device cuda --precision bf16; echo "exit $?"
  step predict cuda; timeout 45 $PY -m fmb predict "$CKPT" digits --device cuda --show 5; echo "exit $?"
} >"$OUT/checks.log" 2>&1

{
  step compare-blocks V2-S 300px
  timeout 80 $PY -m fmb profile --compare-blocks --device cuda --precision bf16 --channels-last \
    -r 300 -b 64 --json "$OUT/profile_v2s.json"
  step compare-blocks B4 380px
  timeout 80 $PY -m fmb profile -v efficientnet_b4 --compare-blocks --device cuda --precision bf16 \
    --channels-last -r 380 -b 32
} >"$OUT/profile.log" 2>&1
echo "done: $(ls "$OUT")"
