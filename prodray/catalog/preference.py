"""People's judgements from the blind A/B page: the stored vote records and their win rates.

Owns the JSONL layout of a vote (written by the Serve ingress, read by `prodray eval
preference`) and the statistics: per pair of arms, wins, ties and the win rate with its 95%
Wilson score interval. No Ray, no HTTP; reading goes through io/storage.py.

Layout: `<votes>/<YYYY-MM-DD>/<trial_id>.jsonl`, one object per vote, one line each:
{"trial_id", "model_id", "left", "right", "choice": "left" | "right" | "same",
 "winner": arm name or "same", "input_sha256", "time"}. The date is the trial's issue day (UTC),
so every vote on one trial lands on the same key and a create-only write admits one vote.
"""

import json
import math
from datetime import datetime, timezone

CHOICES = ("left", "right", "same")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def vote_key(trial_id: str, issued: float) -> str:
    """Where a trial's vote is stored, relative to the votes prefix."""
    day = datetime.fromtimestamp(issued, timezone.utc).strftime("%Y-%m-%d")
    return f"{day}/{trial_id}.jsonl"


def vote_record(trial: dict, choice: str, now: float) -> dict:
    """The stored vote for a verified trial {"trial_id", "left", "right", "model_id", "input_sha256"}."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    winner = "same" if choice == "same" else trial[choice]
    return {"trial_id": trial["trial_id"], "model_id": trial["model_id"], "left": trial["left"],
            "right": trial["right"], "choice": choice, "winner": winner, "input_sha256": trial["input_sha256"],
            "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")}


def vote_line(record: dict) -> bytes:
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (successes may count ties as halves)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 or 1 one end is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def parse_votes(text: str) -> tuple[list[dict], int]:
    """The vote records in one JSONL text, and how many lines were not votes."""
    votes, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if _is_vote(record):
            votes.append(record)
        else:
            skipped += 1
    return votes, skipped


def _is_vote(record) -> bool:
    if not isinstance(record, dict) or record.get("choice") not in CHOICES:
        return False
    left, right = record.get("left"), record.get("right")
    if not (isinstance(left, str) and isinstance(right, str) and left != right):
        return False
    return record.get("winner") == ("same" if record["choice"] == "same" else record[record["choice"]])


def pair_name(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first} vs {second}"


def summarize(votes: list[dict]) -> dict:
    """{"votes": N, "pairs": {"a vs b": {...}}} with a < b; a tie counts half a win for each side.
    A trial voted twice (copied files) counts once."""
    seen, pairs = set(), {}
    for vote in votes:
        if vote.get("trial_id") is not None:
            if vote["trial_id"] in seen:
                continue
            seen.add(vote["trial_id"])
        a, b = sorted((vote["left"], vote["right"]))
        pair = pairs.setdefault(pair_name(a, b), {"a": a, "b": b, "votes": 0, "wins_a": 0, "wins_b": 0, "same": 0,
                                                  "models": {}})
        pair["votes"] += 1
        pair["wins_a" if vote["winner"] == a else "wins_b" if vote["winner"] == b else "same"] += 1
        model = str(vote.get("model_id"))
        pair["models"][model] = pair["models"].get(model, 0) + 1
    for pair in pairs.values():
        successes = pair["wins_a"] + pair["same"] / 2
        pair["win_rate_a"] = successes / pair["votes"]
        pair["ci95"] = list(wilson_interval(successes, pair["votes"]))
    return {"votes": sum(pair["votes"] for pair in pairs.values()), "pairs": dict(sorted(pairs.items()))}


def read_votes(uri: str) -> tuple[list[dict], int]:
    """Every vote in the *.jsonl objects under `uri` (local folder or s3:// prefix), and the count
    of lines that were not votes."""
    from prodray.io import storage
    votes, skipped = [], 0
    for entry in storage.list_files(uri, suffixes=(".jsonl",)):
        found, bad = parse_votes(storage.get_bytes(entry["uri"]).decode("utf-8", errors="replace"))
        votes += found
        skipped += bad
    return votes, skipped


def evaluate_preference(uri: str) -> dict:
    """`prodray eval preference URI`: the win rates of the votes stored under `uri`."""
    votes, skipped = read_votes(uri)
    return {**summarize(votes), "skipped": skipped}
