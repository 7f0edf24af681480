#!/usr/bin/env bash
# End-to-end demo on the embedded default: local Ray head + embedded S3.
# catalog in S3 -> training job -> bulk enhancement job -> serving endpoint, each via `ray job submit`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo-output
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "local stack"
prodray up
eval "$(prodray env)"

step "sample catalog -> s3://prodray/catalog"
prodray catalog sample s3://prodray/catalog --fashion-mnist 40

submit() { ray job submit --working-dir . -- "$@" 2>&1 | grep -v "Failed to query Ray Train Controller"; }

# A rerun redeploys the endpoint at the end; take the old one down first so its replicas do not
# hold the CPUs that the training workers need on a small machine.
serve shutdown -y >/dev/null 2>&1 || true

step "train (Ray Train, 2 workers, DDP) -> s3://prodray/runs/demo-enhancer"
submit python jobs/train.py --config prodray/configs/enhancer_demo.yaml

step "bulk-enhance the catalog (Ray Data) -> s3://prodray/enhanced"
submit python jobs/enhance_catalog.py --input s3://prodray/catalog --output s3://prodray/enhanced \
  --model s3://prodray/runs/demo-enhancer/export --scale 2 --actor-cpus 0.5

step "serve (Ray Serve) on http://127.0.0.1:${PRODRAY_SERVE_PORT:-8000}"
submit python jobs/serve.py --model s3://prodray/runs/demo-enhancer/export --port "${PRODRAY_SERVE_PORT:-8000}"
python - "$OUT" <<'PY'
import sys, urllib.request
from prodray.io import storage
out = sys.argv[1]
image = storage.get_bytes("s3://prodray/catalog/photos/coffee.png")
request = urllib.request.Request("http://127.0.0.1:8000/v1/enhance?format=png", data=image, method="POST",
                                 headers={"content-type": "application/octet-stream"})
with urllib.request.urlopen(request, timeout=120) as response:
    body = response.read()
    open(f"{out}/endpoint-coffee-x2.png", "wb").write(body)
    print(f"POST /v1/enhance -> {response.status}, {len(body)} bytes, model {response.headers.get('x-model-id')}")
request = urllib.request.Request("http://127.0.0.1:8000/v1/generate", method="POST",
                                 data=b'{"attributes": {"articleType": "Tshirts", "baseColour": "Red"}, "n": 1, "seed": 7}',
                                 headers={"content-type": "application/json"})
with urllib.request.urlopen(request, timeout=120) as response:
    body = response.read()
    open(f"{out}/endpoint-generated-red-tshirt.png", "wb").write(body)
    print(f"POST /v1/generate -> {response.status}, {len(body)} bytes, model {response.headers.get('x-model-id')}")
PY

step "report"
prodray report s3://prodray/enhanced --local "$OUT/report.html"

step "where everything is"
cat <<TXT
  catalog:        s3://prodray/catalog (manifest s3://prodray/catalog/_manifest.parquet)
  training run:   s3://prodray/runs/demo-enhancer (config.json, stats.jsonl, samples/, export/)
  enhanced:       s3://prodray/enhanced (results, _manifest/, _SUCCESS)
  endpoint:       http://127.0.0.1:8000/  (POST /v1/enhance, GET /v1/models, GET /healthz)
  endpoint reply: $OUT/endpoint-coffee-x2.png
  gallery:        $OUT/report.html
  dashboard:      $RAY_ADDRESS
  S3 endpoint:    $AWS_ENDPOINT_URL  (eval "\$(prodray env)" for credentials)
Stop everything with: prodray down
TXT
