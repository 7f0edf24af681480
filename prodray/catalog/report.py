"""`prodray report`: a self-contained before/after HTML gallery of a bulk run plus its summary.

Reads `_SUCCESS` and the `_manifest/` shards under the output prefix, samples finished images,
and embeds thumbnails as data URIs so the page is one file that opens anywhere.
"""

import base64
import html
import json
import random

from prodray.catalog.manifest import SUCCESS_FILE, read_manifest
from prodray.io import storage
from prodray.io.codec import decode_image, encode_image
from prodray.io.images import imresize_uint8

THUMB_SIDE = 320


def _thumbnail_uri(data: bytes) -> str:
    rgb = decode_image(data).rgb
    longest = max(rgb.shape[:2])
    if longest > THUMB_SIDE:
        rgb = imresize_uint8(rgb, THUMB_SIDE / longest)
    return "data:image/jpeg;base64," + base64.b64encode(encode_image(rgb, fmt="jpeg", quality=88)).decode()


def build_report(output_uri: str, sample: int = 24, seed: int = 0) -> str:
    success_uri = storage.join(output_uri, SUCCESS_FILE)
    if not storage.exists(success_uri):
        raise FileNotFoundError(f"{success_uri} not found: the bulk job has not finished there")
    summary = json.loads(storage.get_bytes(success_uri))
    rows = read_manifest(output_uri)
    counts: dict = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    finished = [r for r in rows if r["status"] in ("ok", "skipped") and r["output_key"]]
    chosen = random.Random(seed).sample(finished, min(sample, len(finished)))
    input_uri = summary["config"]["input"]
    cards = []
    for row in chosen:
        before = _thumbnail_uri(storage.get_bytes(storage.join(input_uri, row["input_key"])))
        after = _thumbnail_uri(storage.get_bytes(storage.join(output_uri, row["output_key"])))
        sizes = f"{row['width_in']}x{row['height_in']} &rarr; {row['width_out']}x{row['height_out']}"
        cards.append(f'<figure><div class="pair"><img src="{before}" title="before"><img src="{after}" title="after">'
                     f"</div>\n<figcaption>{html.escape(row['input_key'])}: {sizes}</figcaption></figure>")
    problems = "".join(f"<tr><td>{html.escape(r['input_key'])}</td><td>{r['status']}</td>"
                       f"<td>{html.escape(r['reason'] or '')}</td></tr>"
                       for r in rows if r["status"] in ("rejected", "error"))
    style = ("body{font-family:sans-serif;margin:2em} figure{display:inline-block;margin:8px} "
             ".pair img{height:200px;image-rendering:auto;margin-right:4px;border:1px solid #ccc}\n"
             "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px}")
    run = (f"model <b>{html.escape(str(summary.get('model_id')))}</b>, last run {summary.get('processed')} images "
           f"in {summary.get('wall_s')} s\n({summary.get('images_per_s')} images/s). "
           f"All manifest rows by status: {html.escape(json.dumps(counts))}.")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>prodray report</title>
<style>{style}</style></head><body>
<h1>prodray bulk run: {html.escape(output_uri)}</h1>
<p>{run}</p>
<h2>Before / after (sample of {len(chosen)})</h2>{''.join(cards)}
<h2>Rejected and failed inputs</h2><table><tr><th>key</th><th>status</th><th>reason</th></tr>{problems}</table>
</body></html>"""


def write_report(output_uri: str, sample: int = 24, local_path: str | None = None) -> str:
    """Write the gallery to `<output>/_report/index.html` (and to `local_path` if given)."""
    page = build_report(output_uri, sample).encode()
    target = storage.join(output_uri, "_report", "index.html")
    storage.put_bytes(target, page)
    if local_path:
        storage.put_bytes(local_path, page)
        return local_path
    return target
