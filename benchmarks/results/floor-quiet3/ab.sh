#!/bin/bash
# LeNet-5 b32 t1 cpp, heap kept: before ($BEFORE, its own venv and build cache $BEFORE_EXT) and after (this checkout),
# alternating, 81 rounds each, three times (study paused by the caller); pool.py pools the paired ratios.
set -u
cd "$(dirname "$0")"
AFTER=${AFTER:-../../../.venv/bin}
BEFORE=${BEFORE:?path of the before checkout}
BEFORE_EXT=${BEFORE_EXT:-${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}}
KEPT="MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296"
for i in 1 2 3; do
  for side in before after; do
    if [ $side = before ]; then bin=$BEFORE/.venv/bin; ext=$BEFORE_EXT; else bin=$AFTER; ext=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}; fi
    env $KEPT TORCH_EXTENSIONS_DIR="$ext" ANL_FUSED_BACKEND=cpp nice -n -10 "$bin/anl-fused" bench --models lenet5 --batch 32 \
      --size 28 --threads 1 --methods plain floor tworound --repeats 81 --inner 10 \
      --out "lenet5-b32-t1-cpp-kept-r81-$side-$i.json" 2>&1 | grep "^| lenet5" | sed "s/^/$side $i /"
  done
done
