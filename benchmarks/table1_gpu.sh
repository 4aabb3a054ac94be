#!/usr/bin/env bash
# Table 1 on a GPU: `anl-fused table1` for VGG-16 (then LeNet-5) on Fashion-MNIST, both norms, resumable.
#
#   benchmarks/table1_gpu.sh                      # the paper's protocol: 100 + 100 epochs (baseline 200), 3 seeds
#   EPOCHS=10 FINETUNE=10 SEEDS=1 benchmarks/table1_gpu.sh    # what fits one short lease (sizes: README)
#
# Environment: EPOCHS, FINETUNE (default 100, 100), SEEDS (3), MODELS ("vgg16 lenet5"), JOBS (trainings at once
# on the GPU, default 4), DATA (a directory of the four Fashion-MNIST IDX files, gzipped or not; default: the
# Debian package's, or ./data), DEVICE (cuda), RUNS (runs/table1), OUT (benchmarks/results/table1), PYTHON.
# Run it again to continue: finished runs are skipped, interrupted ones resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
for model in ${MODELS:-vgg16 lenet5}; do
    "$PYTHON" -m anl_fused.cli table1 --model "$model" --dataset fashion-mnist ${DATA:+--data-dir "$DATA"} \
        --seeds "${SEEDS:-3}" --epochs "${EPOCHS:-100}" --finetune-epochs "${FINETUNE:-100}" --norms sample layer \
        --device "${DEVICE:-cuda}" --jobs "${JOBS:-4}" --threads 2 --nice 0 \
        --runs-dir "${RUNS:-runs/table1}" --out "${OUT:-benchmarks/results/table1}"
done
