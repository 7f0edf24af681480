#!/usr/bin/env bash
# Train the product GAN on a lent GPU machine (torch, no Ray, no network) in one call, then score it.
#
# Here, first (copies the dataset's source and the pydantic wheels the GPU image lacks into
# .device/, which git ignores; Fashion-MNIST ~35 MB, fashion-products ~45 MB, under the 64 MiB a
# call carries together with the repo):
#   scripts/device_gan.sh pack fashion-mnist|fashion-products
# Then one device call (the `run` tool, carry [".device"]), e.g.:
#   bash scripts/device_gan.sh train fashion-mnist 7 data.batch_size=256 optim.total_images=3000000
# It prepares the data there, runs prodray.train.gan_local for MINUTES (or to optim.total_images),
# then `prodray eval gan` (FID/KID/CAS/attribute accuracy, the shipped judge) and leaves in $OUT:
# train.log, stats.jsonl, the last sample grid, eval.json and export/ (generator + config.json).
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
  # The GPU image has Python 3.12 and no pydantic; the versions this project's venv resolved.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/wheels \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  du -sh .device
  exit 0
fi
[ "$action" = train ] && [ $# -ge 1 ] || usage
minutes=$1
shift
: "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/prodray-site .device/wheels/*.whl
  export PYTHONPATH=/tmp/prodray-site${PYTHONPATH:+:$PYTHONPATH}
fi
work=${WORK:-/tmp/prodray-device}
prepared=$work/$dataset run=$work/runs/device
[ -f "$prepared/vocab.json" ] || "$PYTHON" -m prodray.cli gan prepare "$dataset" --source "$carried" --out "$prepared"
set -o pipefail
PYTHONUNBUFFERED=1 "$PYTHON" -m prodray.train.gan_local --config "prodray/configs/gan_${dataset//-/_}.yaml" \
  --minutes "$minutes" "data.prepared=$prepared" "run.storage_path=$work/runs" run.name=device "$@" 2>&1 | tee "$OUT/train.log"
cp "$run/stats.jsonl" "$OUT/"
cp "$(ls "$run"/samples/*.png | tail -1)" "$OUT/"
mkdir -p "$OUT/export" && cp "$run"/export/* "$OUT/export/"
# shellcheck disable=SC2086
"$PYTHON" -m prodray.cli eval gan --model "$run/export" --data "$prepared" $eval_args --threads 8 --json \
  | tee "$OUT/eval.json"
