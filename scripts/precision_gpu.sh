#!/usr/bin/env bash
# MASS pre-training throughput on one GPU in fp32, bf16 and fp16 (train.precision), one run after the other
# with the same data and seed, and an unsupervised (back-translation) smoke run in bf16.
# Usage: scripts/precision_gpu.sh [RUN_ROOT]
# Environment: PRESET (base), MAX_TOKENS (8000), SECONDS_EACH (40), DEVICE (cuda), MASS (mass)
set -euo pipefail
root=${1:-runs/precision_gpu}
mass=${MASS:-mass}
minutes=$(python3 -c "print(${SECONDS_EACH:-40} / 60)")
common=("model.preset=${PRESET:-base}" "data.max_tokens=${MAX_TOKENS:-8000}" data.train_split=unsup optim.lr=0.0005
        optim.warmup_steps=100 train.device=${DEVICE:-cuda} train.max_steps=1000000 "train.time_budget=$minutes"
        train.log_interval=10 train.eval_interval=1000000 train.save_interval=1000000)
mkdir -p "$root"
for precision in fp32 bf16 fp16; do
    $mass pretrain --run-dir "$root/$precision" "${common[@]}" "train.precision=$precision" \
        > "$root/$precision.log" 2>&1
done
$mass unsup --from "$root/bf16" --run-dir "$root/unsup_bf16" model.dropout=0.0 data.max_tokens=2000 \
    train.device=${DEVICE:-cuda} train.max_steps=20 train.log_interval=10 train.eval_interval=20 train.precision=bf16 \
    > "$root/unsup_bf16.log" 2>&1
python3 - "$root" <<'PY'
import json, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
print("| precision | updates | target tokens/s (median of logged windows, first skipped) | last loss | valid MASS ppl |")
print("|---|---:|---:|---:|---:|")
for name in ("fp32", "bf16", "fp16"):
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_ppl" in r]
    speed = statistics.median(r["tgt_tokens_per_s"] for r in (train[1:] or train))
    print(f"| {name} | {train[-1]['step']} | {speed:,.0f} | {train[-1]['loss']:.3f} | {valid[-1]['valid_ppl']:.1f} |")
last = [json.loads(line) for line in (root / "unsup_bf16" / "metrics.jsonl").read_text().splitlines()][-1]
print("unsup bf16, step", last["step"], {k: round(v, 2) for k, v in last.items() if k.startswith("bleu")})
PY
