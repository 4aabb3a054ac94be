#!/usr/bin/env bash
# Does the study's training compute the same bits at two commits? Short runs of every arm kind at commit A (the pinned
# venv) and B (the new one), and a run started at A and resumed at B; checkpoints (weights, optimizer, generators)
# and metrics (without wall times) compared bit for bit by compare.py. Usage: check.sh VENV_A VENV_B OUT
set -euo pipefail
A=$1; B=$2; OUT=$3; HERE=$(cd "$(dirname "$0")" && pwd)
export ANL_FUSED_BACKEND=torch
common=(--model lenet5 --dataset fashion-mnist --batch-size 128 --lr 0.1 --seed 100 --device cpu --threads 1
        --finetune-lr floor --no-progress)
run() {  # venv out-name extra-args...
    local venv=$1 name=$2; shift 2
    "$venv/bin/anl-fused" train "${common[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
for kind in anl sam plain anl-cosine opposite gaussian; do
    case $kind in
        anl) args=(--variant anl --eps 0.03 --norm layer --epochs 100 --finetune-epochs 100) ;;
        opposite) args=(--variant opposite --eps 0.03 --norm layer --epochs 100 --finetune-epochs 100) ;;
        gaussian) args=(--variant gaussian --eps 0.03 --epochs 100 --finetune-epochs 100) ;;
        sam) args=(--variant sam --sam-rho 0.1 --epochs 100 --finetune-epochs 100) ;;
        plain) args=(--variant plain --epochs 200 --finetune-epochs 0 --finetune-lr continue) ;;
        anl-cosine) args=(--variant anl --eps 0.03 --norm layer --epochs 100 --finetune-epochs 100 --schedule cosine) ;;
    esac
    run "$A" "$kind-A" "${args[@]}" --stop-after-steps 40
    run "$B" "$kind-B" "${args[@]}" --stop-after-steps 40
done
# whole epochs (evaluation, the schedule, the switch to phase 2) on digits: 3 + 2 epochs
for kind in anl sam plain anl-cosine; do
    case $kind in
        anl) args=(--variant anl --eps 0.03 --norm layer) ;;
        sam) args=(--variant sam --sam-rho 0.1) ;;
        plain) args=(--variant plain) ;;
        anl-cosine) args=(--variant anl --eps 0.03 --norm layer --schedule cosine) ;;
    esac
    for side in A B; do
        venv=$A; [ $side = B ] && venv=$B
        run "$venv" "digits-$kind-$side" "${args[@]}" --dataset digits --epochs 3 --finetune-epochs 2
    done
done
# started at A, resumed at B, against A throughout: 20 steps, then 20 more (anl, the arm with the most state)
args=(--variant anl --eps 0.03 --norm layer --epochs 100 --finetune-epochs 100)
run "$A" resume-AA "${args[@]}" --stop-after-steps 20
run "$A" resume-AA "${args[@]}" --stop-after-steps 40 --resume
run "$A" resume-AB "${args[@]}" --stop-after-steps 20
run "$B" resume-AB "${args[@]}" --stop-after-steps 40 --resume
"$B/bin/python" "$HERE/compare.py" "$OUT" anl-A:anl-B sam-A:sam-B plain-A:plain-B anl-cosine-A:anl-cosine-B \
    opposite-A:opposite-B gaussian-A:gaussian-B resume-AA:resume-AB resume-AA:anl-A digits-anl-A:digits-anl-B \
    digits-sam-A:digits-sam-B digits-plain-A:digits-plain-B digits-anl-cosine-A:digits-anl-cosine-B
