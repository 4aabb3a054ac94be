#!/bin/bash
# measurement for issue #20 after the in-place add_noise (study paused by the caller):
# this checkout (after) and an unchanged main checkout (before, $BEFORE, its own venv) in one window.
set -u
cd "$(dirname "$0")"
AFTER=${AFTER:-../../../.venv/bin}
BEFORE=${BEFORE:?path of the before checkout}
BEFORE_EXT=${BEFORE_EXT:-${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}}  # its C++ build cache
KEPT="MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296"
lenet() {  # $1 bin dir, $2 batch, $3 tag, $4 malloc env or empty
  inner=$([ "$2" = 128 ] && echo 5 || echo 10)
  ext=$([ "$1" = "$AFTER" ] && echo "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}" || echo "$BEFORE_EXT")
  env $4 TORCH_EXTENSIONS_DIR="$ext" ANL_FUSED_BACKEND=cpp nice -n -10 "$1/anl-fused" bench --models lenet5 --batch "$2" --size 28 --threads 1 \
    --methods plain floor tworound --repeats 21 --inner "$inner" --out "lenet5-b$2-t1-cpp-$3.json" 2>&1 | grep "^| lenet5\|warning"
}
for round in 1 2; do
  lenet "$BEFORE/.venv/bin" 32 "kept-before-$round" "$KEPT"
  lenet "$AFTER" 32 "kept-after-$round" "$KEPT"
done
lenet "$BEFORE/.venv/bin" 128 kept-before "$KEPT"
lenet "$AFTER" 128 kept-after "$KEPT"
lenet "$AFTER" 128 after ""
lenet "$AFTER" 32 after ""
env ANL_FUSED_BACKEND=cpp nice -n -10 "$AFTER/anl-fused" bench --models vgg11 resnet18 --batch 32 --size 32 --threads 2 \
  --methods plain floor tworound --repeats 9 --out vgg11-resnet18-b32-t2-cpp-after.json 2>&1 | grep "^| vgg11\|^| resnet18\|warning"
env $KEPT ANL_FUSED_BACKEND=cpp nice -n -10 "$AFTER/python" -m anl_fused.benchmarks.profile_step --batch 32 --steps 20 --repeats 15 \
  --out profile-lenet5-b32-cpp-after.txt > /dev/null 2>&1
(cd "$BEFORE" && env $KEPT TORCH_EXTENSIONS_DIR="$BEFORE_EXT" ANL_FUSED_BACKEND=cpp nice -n -10 .venv/bin/python -m anl_fused.benchmarks.profile_step --batch 32 \
  --steps 20 --repeats 15 --out "$OLDPWD/profile-lenet5-b32-cpp-before.txt" > /dev/null 2>&1)
echo measured
