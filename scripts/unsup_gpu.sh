#!/usr/bin/env bash
# Unsupervised fr<->en on one GPU in about 12 minutes: the recipes of configs/studies/unsup_paper.yaml and unsup.yaml
# with larger batches and wall-clock budgets instead of update counts. A small model leaves a GPU mostly
# idle, so the runs of each phase share it side by side:
#   1. MASS pre-training on the non-parallel halves, and the same with a language-agnostic encoder
#      (model.encoder_lang_embed=false) and denoising auto-encoder steps beside MASS;
#   2. MASS + back-translation from the pre-trained model (the paper's recipe), the same from random weights
#      (the baseline), with DAE steps added, and the agnostic model with MASS + DAE + back-translation;
#   3. test BLEU / chrF both ways and cross-lingual retrieval on the first 400 test verses (beam 5).
# Usage: scripts/unsup_gpu.sh [RUN_ROOT]      (default runs/unsup_gpu)
# Environment: DEVICE (cuda), PRETRAIN_MIN (2.5), BT_MIN (8), MASS (the mass command), EXTRA (overrides
# added to every run, e.g. "model.preset=tiny" for a smoke run on a CPU).
set -euo pipefail
root=${1:-runs/unsup_gpu}
device=${DEVICE:-cuda}
mass=${MASS:-mass}
read -r -a extra <<< "${EXTRA:-}"
common=(model.preset=small model.dropout=0.0 model.attention_dropout=0.0 data.max_len=100 data.max_tokens=4000
        "train.device=$device" train.max_steps=1000000 train.log_interval=50 train.save_interval=1000000)
dae='{name: mass, lang: en}, {name: mass, lang: fr}, {name: dae, lang: en}, {name: dae, lang: fr}'
bt='{name: bt, src: en, tgt: fr}, {name: bt, src: fr, tgt: en}'
mkdir -p "$root"
wait_all() {  # every background run of the phase, failing if one failed (see its log)
    local failed=0 pid
    for pid in $(jobs -p); do wait "$pid" || failed=1; done
    return "$failed"
}

pretrain=("${common[@]}" data.train_split=unsup optim.lr=0.001 optim.warmup_steps=100 train.eval_interval=1000
          "train.time_budget=${PRETRAIN_MIN:-2.5}" "${extra[@]}")
$mass pretrain --run-dir "$root/pretrain" "${pretrain[@]}" > "$root/pretrain.log" 2>&1 &
$mass pretrain --run-dir "$root/pretrain_agnostic" "${pretrain[@]}" model.encoder_lang_embed=false \
    "objectives=[$dae]" > "$root/pretrain_agnostic.log" 2>&1 &
wait_all

unsup=("${common[@]}" optim.lr=0.0005 optim.warmup_steps=50 train.eval_interval=200
       "train.time_budget=${BT_MIN:-8}" "${extra[@]}")
$mass unsup --from "$root/pretrain" --run-dir "$root/unsup_mass" "${unsup[@]}" > "$root/unsup_mass.log" 2>&1 &
$mass unsup --from "$root/pretrain" --run-dir "$root/unsup_scratch" "${unsup[@]}" scratch=true \
    > "$root/unsup_scratch.log" 2>&1 &
$mass unsup --from "$root/pretrain" --run-dir "$root/unsup_mass_dae" "${unsup[@]}" "objectives=[$dae, $bt]" \
    > "$root/unsup_mass_dae.log" 2>&1 &
$mass unsup --from "$root/pretrain_agnostic" --run-dir "$root/unsup_agnostic_dae" "${unsup[@]}" \
    "objectives=[$dae, $bt]" > "$root/unsup_agnostic_dae.log" 2>&1 &
wait_all

runs=(unsup_mass unsup_scratch unsup_mass_dae unsup_agnostic_dae)
for run in "${runs[@]}"; do
    {
        for pair in en-fr fr-en; do
            $mass evaluate "$root/$run" --src "${pair%-*}" --tgt "${pair#*-}" --device "$device" --limit 400 |
                sed -nE "s/^(bleu|chrf): /\1_$pair: /p"
        done
        $mass evaluate "$root/$run" --task align --src en --tgt fr --device "$device" --limit 400 | grep '^retrieval:'
    } > "$root/$run.scores" 2> "$root/$run.eval.log" &
done
wait_all
for run in "${runs[@]}"; do
    echo "$run: $(tr '\n' ' ' < "$root/$run.scores")"
done
