#!/usr/bin/env bash
# Train the image models on a lent GPU machine (torch, no Ray, no network) in one call: first the
# precision paths on that card (enhancer inference and train step, repair train step), then the
# repair model (two widths), restore-x4 and restore-x1 side by side, each for MINUTES with the lr
# schedule fitted to the time (prodray.local.runner --fit).
#
# Here, first (copies half of GroceryStore train, 6 of its val photos, Set5 and the pydantic wheels
# the GPU image lacks into .device/, which git ignores; about 35 MB, under the 64 MiB a call carries
# together with the repo):
#   scripts/device_train.sh pack
# Then one device call (the `run` tool, carry [".device"]):
#   bash scripts/device_train.sh train 6
# It leaves in $OUT: bench.txt, and per run <name>.tgz (train.log, stats.jsonl, the last sample
# grid, export/). RUNS picks runs (default: all); BENCH=0 skips the benchmarks (a CPU trial:
# `RUNS=repair BENCH=0 OUT=/tmp/out DEVICE=cpu bash scripts/device_train.sh train 0.2`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
data=../shared/data carried=.device
usage() { echo "usage: $0 pack | train MINUTES" >&2; exit 2; }
[ $# -ge 1 ] || usage

if [ "$1" = pack ]; then
  rm -rf "$carried" && mkdir -p "$carried"/grocery-train "$carried"/grocery-val "$carried"/wheels
  # Every second training photo (sorted paths, so the same half each time), flattened.
  (cd "$data/grocery-store/train" && find . -name '*.jpg' | sort | awk 'NR % 2 == 1') | while read -r path; do
    cp "$data/grocery-store/train/$path" "$carried/grocery-train/$(echo "${path#./}" | tr / _)"
  done
  (cd "$data/grocery-store/val" && find . -name '*.jpg' | sort | awk 'NR % 50 == 1') | while read -r path; do
    cp "$data/grocery-store/val/$path" "$carried/grocery-val/$(echo "${path#./}" | tr / _)"
  done
  cp -r "$data/sr-bench/Set5" "$carried/Set5"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$carried"/wheels \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  du -sh "$carried"
  exit 0
fi
[ "$1" = train ] && [ $# -eq 2 ] || usage
minutes=$2
: "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/prodray-site "$carried"/wheels/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/prodray-site
fi
device=${DEVICE:-cuda} work=${WORK:-/tmp/prodray-device}

if [ "${BENCH:-1}" = 1 ]; then
  { nvidia-smi -L || true; "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$OUT/bench.txt"
  "$PYTHON" benchmarks/inference.py --device "$device" --images 16 --size 512 2>&1 | tee -a "$OUT/bench.txt"
  "$PYTHON" benchmarks/train_step.py --device "$device" --batch 64 --steps 20 2>&1 | tee -a "$OUT/bench.txt"
  "$PYTHON" benchmarks/repair_step.py --device "$device" --batch 32 --seconds 5 2>&1 | tee -a "$OUT/bench.txt"
fi

train=(data.sources=["$carried/grocery-train"] run.tick_images=20000 "run.storage_path=$work")
declare -A runs=(
  [repair]="prodray/configs/repair.yaml data.batch_size=32 data.val_folder=$carried/grocery-val"
  [repair-wide]="prodray/configs/repair.yaml data.batch_size=32 data.val_folder=$carried/grocery-val model.channels=48 model.blocks=6"
  [restore-x4]="prodray/configs/restore_x4.yaml data.batch_size=64 data.val_folder=$carried/Set5"
  [restore-x1]="prodray/configs/restore_x1.yaml data.batch_size=64 data.val_folder=$carried/Set5"
)
for name in ${RUNS:-${!runs[@]}}; do
  read -r config overrides <<<"${runs[$name]}"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=4 "$PYTHON" -m prodray.local.runner --config "$config" --minutes "$minutes" --fit --device "$device" \
    "${train[@]}" "run.name=$name" $overrides >"$work-$name.log" 2>&1 &
done
mkdir -p "$work"
wait || true
for name in ${RUNS:-${!runs[@]}}; do
  run=$work/$name
  tail -5 "$work-$name.log"
  cp "$work-$name.log" "$run/train.log" 2>/dev/null || { cat "$work-$name.log"; continue; }
  sample=$(ls "$run"/samples/*.png 2>/dev/null | tail -1 || true)
  tar -czf "$OUT/$name.tgz" -C "$run" train.log stats.jsonl export ${sample:+samples/$(basename "$sample")}
done
ls -la "$OUT"
