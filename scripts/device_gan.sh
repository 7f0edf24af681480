#!/usr/bin/env bash
# Train the product GAN on a lent GPU machine (torch, no Ray, no network) in one call, then score it.
#
# Here, first (copies the dataset's source and the pydantic wheels the GPU image lacks into
# .device/, which git ignores; Fashion-MNIST ~35 MB, fashion-products ~45 MB, under the 64 MiB a
# call carries together with the repo):
#   scripts/device_gan.sh pack fashion-mnist|fashion-products
# Then one device call (the `run` tool, carry [".device"]), e.g.:
#   bash scripts/device_gan.sh train fashion-mnist 6 data.batch_size=256 run.tick_images=200000
# It prepares the data there, measures the enhancer's inference paths and train step
# (benchmarks/inference.py, benchmarks/train_step.py) and the GAN step (benchmarks/gan_step.py at batch 64 and 256),
# trains with prodray.local.runner for MINUTES (the schedule fitted to the time after the first
# tick, the lr falling over its last DECAY_LAST, default 0.4), then runs `prodray eval gan`
# (FID/KID/CAS/attribute accuracy, the shipped judge) and leaves in $OUT: bench.txt, train.log,
# stats.jsonl, the last sample grid, eval.json and export/ (generator + config.json).
# BENCH_STEPS and EVAL_ARGS shrink the benchmark and the eval (a CPU trial of the script).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
usage() { echo "usage: $0 pack DATASET | train DATASET MINUTES [key=value ...]  (DATASET: fashion-mnist, fashion-products)" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 dataset=$2
shift 2
case $dataset in
  fashion-mnist) source_dir=/usr/share/datasets/fashion-mnist eval_args="--n 2000 --cas-epochs 5" ;;
  fashion-products) source_dir=../shared/data/fashion-product-small eval_args="--n 2000 --cas-epochs 3" ;;
  *) usage ;;
esac
carried=.device/$dataset

if [ "$action" = pack ]; then
  [ -d "$source_dir" ] || { echo "no source at $source_dir" >&2; exit 2; }
  rm -rf .device && mkdir -p "$carried" .device/wheels
  cp "$source_dir"/* "$carried"/
  # The GPU image has Python 3.12 and no pydantic: the versions this venv resolved (typing-extensions
  # too, in case the image's is older than pydantic needs).
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/wheels \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  du -sh .device
  exit 0
fi
[ "$action" = train ] && [ $# -ge 1 ] || usage
minutes=$1
shift
: "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # prodray is not installed there: import it from the checkout
if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/prodray-site .device/wheels/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/prodray-site
fi
work=${WORK:-/tmp/prodray-device}
prepared=$work/$dataset run=$work/runs/device
[ -f "$prepared/vocab.json" ] || "$PYTHON" -m prodray.cli gan prepare "$dataset" --source "$carried" --out "$prepared"
config=prodray/configs/gan_${dataset//-/_}.yaml
# The precision paths on this card first: enhancer inference (fp32 NCHW / channels-last / bf16 / fp16)
# and the enhancer's train step, then the GAN's step.
"$PYTHON" benchmarks/inference.py --device cuda --images 16 --size 512 2>&1 | tee -a "$OUT/bench.txt"
"$PYTHON" benchmarks/train_step.py --device cuda --batch 64 --steps "${BENCH_STEPS:-20}" 2>&1 | tee -a "$OUT/bench.txt"
for batch in 64 256; do
  "$PYTHON" benchmarks/gan_step.py --config "$config" --batch $batch --steps "${BENCH_STEPS:-100}" 2>&1 \
    | tee -a "$OUT/bench.txt"
done
PYTHONUNBUFFERED=1 "$PYTHON" -m prodray.local.runner --config "$config" --minutes "$minutes" \
  --decay-last "${DECAY_LAST:-0.4}" "data.prepared=$prepared" "run.storage_path=$work/runs" run.name=device "$@" \
  2>&1 | tee "$OUT/train.log"
cp "$run/stats.jsonl" "$OUT/"
cp "$(ls "$run"/samples/*.png | tail -1)" "$OUT/"
mkdir -p "$OUT/export" && cp "$run"/export/* "$OUT/export/"
# shellcheck disable=SC2086
"$PYTHON" -m prodray.cli eval gan --model "$run/export" --data "$prepared" ${EVAL_ARGS:-$eval_args} --threads 8 --json \
  | tee "$OUT/eval.json"
