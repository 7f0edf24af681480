"""prodray.catalog.preference: the vote records of the blind A/B page and their win rates.

The interval is checked against published Wilson score values (and against values worked out
by hand from the formula), and the check itself is shown to catch the usual wrong intervals.
"""

import json
import math
import subprocess
import sys

import pytest

from prodray.catalog.preference import (
    parse_votes,
    summarize,
    vote_key,
    vote_line,
    vote_record,
    wilson_interval,
)

# (successes, n) -> the 95% Wilson score interval, as R's binom.wilson / statsmodels give it.
KNOWN_WILSON = {
    (8, 10): (0.4901625, 0.9433178),
    (5, 10): (0.2365931, 0.7634069),
    (0, 10): (0.0, 0.2775328),
    (10, 10): (0.7224672, 1.0),
    (7, 20): (0.1811918, 0.5671457),
    (1, 1): (0.2065493, 1.0),
}


def check_known_wilson(interval) -> None:
    for (successes, n), expected in KNOWN_WILSON.items():
        assert interval(successes, n) == pytest.approx(expected, abs=1e-6), (successes, n)


def test_wilson_interval_matches_published_values():
    check_known_wilson(wilson_interval)


def wald(successes, n, z=1.959963984540054):
    p = successes / n
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def test_the_known_values_catch_a_wrong_interval():
    """A Wald interval, a 90% Wilson interval and a Wilson interval missing the z^2/4n^2 term all fail."""
    def wilson_90(successes, n):
        return wilson_interval(successes, n, z=1.6448536269514722)

    def wilson_without_term(successes, n, z=1.959963984540054):
        p, z2 = successes / n, z * z
        centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n)
        return centre - half, centre + half

    for wrong in (wald, wilson_90, wilson_without_term):
        with pytest.raises(AssertionError):
            check_known_wilson(wrong)


def test_wilson_interval_with_ties_counted_as_halves_by_hand():
    # 1 win + 1 tie in 5: p = 0.3, z^2 = 3.841459; centre = (0.3 + 0.384146) / 1.768292 = 0.386896,
    # half = 1.959964 / 1.768292 * sqrt(0.3 * 0.7 / 5 + 3.841459 / 100) = 0.314313.
    assert wilson_interval(1.5, 5) == pytest.approx((0.072583, 0.701209), abs=1e-5)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def _vote(trial_id, left, right, choice, model="m1"):
    trial = {"trial_id": trial_id, "left": left, "right": right, "model_id": model, "input_sha256": "0" * 64}
    return vote_record(trial, choice, now=1_700_000_000.0)


def test_summarize_counts_wins_ties_and_rates_per_pair():
    votes = [_vote("t1", "model", "bicubic", "left"), _vote("t2", "bicubic", "model", "right"),
             _vote("t3", "bicubic", "model", "left"), _vote("t4", "model", "bicubic", "same"),
             _vote("t5", "model", "bicubic", "left", model="m2"),
             _vote("t5", "model", "bicubic", "right"),  # the same trial again (a copied file): counted once
             _vote("r1", "strength-1", "strength-0", "left"), _vote("r2", "strength-0", "strength-1", "same")]
    result = summarize(votes)
    assert result["votes"] == 7
    assert list(result["pairs"]) == ["bicubic vs model", "strength-0 vs strength-1"]
    clean = result["pairs"]["bicubic vs model"]
    assert {k: clean[k] for k in ("a", "b", "votes", "wins_a", "wins_b", "same")} == {
        "a": "bicubic", "b": "model", "votes": 5, "wins_a": 1, "wins_b": 3, "same": 1}
    assert clean["win_rate_a"] == pytest.approx(0.3)  # (1 + 1/2) / 5
    assert clean["ci95"] == pytest.approx([0.072583, 0.701209], abs=1e-5)
    assert clean["models"] == {"m1": 4, "m2": 1}
    strengths = result["pairs"]["strength-0 vs strength-1"]
    assert (strengths["wins_a"], strengths["wins_b"], strengths["same"]) == (0, 1, 1)
    assert strengths["win_rate_a"] == pytest.approx(0.25)


def test_vote_record_names_the_winner_and_the_key_is_the_issue_day():
    record = _vote("abc", "strength-auto", "strength-1", "right")
    assert record["winner"] == "strength-1" and record["choice"] == "right"
    assert record["time"].startswith("2023-11-14T22:13:20")
    assert _vote("abc", "model", "bicubic", "same")["winner"] == "same"
    with pytest.raises(ValueError):
        _vote("abc", "model", "bicubic", "both")
    assert vote_key("abc", 1_700_000_000.0) == "2023-11-14/abc.jsonl"
    assert vote_key("abc", 1_700_000_000.0 + 3 * 3600) == "2023-11-15/abc.jsonl"  # UTC days


def test_parse_votes_skips_what_is_not_a_vote():
    good = vote_line(_vote("t1", "model", "bicubic", "left")).decode()
    lying = json.dumps({**_vote("t2", "model", "bicubic", "left"), "winner": "bicubic"})
    text = "\n".join([good.strip(), "", "not json", "[1]", lying, json.dumps({"choice": "left"})])
    votes, skipped = parse_votes(text)
    assert [v["trial_id"] for v in votes] == ["t1"] and skipped == 4


def test_eval_preference_reads_every_jsonl_under_the_uri(root):
    """The CLI on stored votes, in a bucket and in a local folder: nested day folders, other files ignored."""
    from prodray.io import storage

    lines = [_vote("t1", "model", "bicubic", "left"), _vote("t2", "bicubic", "model", "left"),
             _vote("t3", "model", "bicubic", "same")]
    for day, record in zip(("2024-01-01", "2024-01-01", "2024-01-02"), lines):
        assert storage.put_if_absent(storage.join(root, day, f"{record['trial_id']}.jsonl"), vote_line(record))
    storage.put_bytes(storage.join(root, "2024-01-02", "notes.txt"), b"not votes")
    out = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "preference", root, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["votes"] == 3 and result["skipped"] == 0
    pair = result["pairs"]["bicubic vs model"]
    assert (pair["wins_a"], pair["wins_b"], pair["same"]) == (1, 1, 1)
    assert pair["win_rate_a"] == pytest.approx(0.5)
    assert pair["ci95"] == pytest.approx(list(wilson_interval(1.5, 3)))
    text = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "preference", root],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "bicubic vs model: 3 votes" in text.stdout, text.stdout + text.stderr
