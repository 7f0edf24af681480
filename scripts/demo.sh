#!/usr/bin/env bash
# End-to-end demo on the embedded default: local Ray head + embedded S3.
# catalog in S3 -> training job -> bulk restoration of the JPEG-damaged supplier copies with the
# shipped restore-x2 -> serving endpoint, each via `ray job submit`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo-output
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "local stack"
prodray up
eval "$(prodray env)"

PORT="${PRODRAY_SERVE_PORT:-8000}"

step "sample catalog -> s3://prodray/catalog"
prodray catalog sample s3://prodray/catalog --fashion-mnist 40

step "the same photos as suppliers send them (JPEG quality 40) -> s3://prodray/supplier"
prodray catalog sample s3://prodray/supplier --fashion-mnist 0 --jpeg-quality 40

submit() { ray job submit --working-dir . -- "$@" 2>&1 | grep -v "Failed to query Ray Train Controller"; }

# A rerun redeploys the endpoint at the end; take the old one down first so its replicas do not
# hold the CPUs that the training workers need on a small machine.
serve shutdown -y >/dev/null 2>&1 || true

step "train (Ray Train, 2 workers, DDP) -> s3://prodray/runs/demo-enhancer"
submit python jobs/train.py --config prodray/configs/enhancer_demo.yaml

step "restore and upscale the supplier copies (Ray Data, shipped restore-x2, strength auto) -> s3://prodray/restored"
submit python jobs/enhance_catalog.py --input s3://prodray/supplier --output s3://prodray/restored \
  --model restore-x2 --strength auto --scale 2 --actor-cpus 0.5

step "serve (Ray Serve, restore-x2) on http://127.0.0.1:$PORT"
submit python jobs/serve.py --model restore-x2 --port "$PORT"
python - "$OUT" "$PORT" <<'PY'
import sys, urllib.request
from prodray.io import storage
out, port = sys.argv[1], sys.argv[2]
image = storage.get_bytes("s3://prodray/supplier/photos/coffee.jpg")
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/enhance?format=png&strength=auto", data=image,
                                 method="POST", headers={"content-type": "application/octet-stream"})
with urllib.request.urlopen(request, timeout=120) as response:
    body = response.read()
    open(f"{out}/endpoint-coffee-restored-x2.png", "wb").write(body)
    print(f"POST /v1/enhance?strength=auto -> {response.status}, {len(body)} bytes, model "
          f"{response.headers.get('x-model-id')}, strength {response.headers.get('x-strength')}")
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", method="POST",
                                 data=b'{"attributes": {"articleType": "Tshirts", "baseColour": "Red"}, "n": 1, "seed": 7}',
                                 headers={"content-type": "application/json"})
with urllib.request.urlopen(request, timeout=120) as response:
    body = response.read()
    open(f"{out}/endpoint-generated-red-tshirt.png", "wb").write(body)
    print(f"POST /v1/generate -> {response.status}, {len(body)} bytes, model {response.headers.get('x-model-id')}")
# Repair: a sticker-sized rectangle over the coffee photo, filled by the shipped repair model.
boundary = "prodray-demo"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"coffee.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n").encode() + image + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"mask\"\r\n\r\n[[40, 30, 60, 24]]"
        f"\r\n--{boundary}--\r\n").encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/repair", data=body, method="POST",
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
with urllib.request.urlopen(request, timeout=120) as response:
    body = response.read()
    open(f"{out}/endpoint-coffee-repaired.png", "wb").write(body)
    print(f"POST /v1/repair -> {response.status}, {len(body)} bytes, model {response.headers.get('x-model-id')}, "
          f"{response.headers.get('x-repaired-pixels')} pixels repaired")
PY

step "report: supplier copies before / after"
prodray report s3://prodray/restored --local "$OUT/report.html"

step "where everything is"
cat <<TXT
  catalog:        s3://prodray/catalog (manifest s3://prodray/catalog/_manifest.parquet)
  training run:   s3://prodray/runs/demo-enhancer (config.json, stats.jsonl, samples/, export/)
  supplier JPEGs: s3://prodray/supplier (the photos at JPEG quality 40)
  restored:       s3://prodray/restored (results, _manifest/, _SUCCESS)
  endpoint:       http://127.0.0.1:$PORT/  (POST /v1/enhance, /v1/generate, /v1/repair, GET /v1/models, GET /healthz)
  endpoint reply: $OUT/endpoint-coffee-restored-x2.png, $OUT/endpoint-coffee-repaired.png
  gallery:        $OUT/report.html
  dashboard:      $RAY_ADDRESS
  S3 endpoint:    $AWS_ENDPOINT_URL  (eval "\$(prodray env)" for credentials)
Stop everything with: prodray down
TXT
