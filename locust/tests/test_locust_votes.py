"""The vote data file: the original's two bands with two albums each, a larger roster, and every
vote it can produce valid for ingest (four strings, years and ranks in range)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def load(repo):
    return json.loads((repo / "locust" / "votes.json").read_text())


def test_original_set_is_two_bands_with_two_albums_each_from_the_example_roster(repo):
    original = load(repo)["original"]
    assert len(original) == 2 and all(len(band["albums"]) == 2 for band in original)
    roster = {b["name"]: set(b["albums"]) for b in json.loads((repo / "roster.example.json").read_text())["bands"]}
    for band in original:
        assert {a["album"] for a in band["albums"]} <= roster.get(band["name"], set()), band["name"]


def test_roster_set_is_larger_and_has_no_duplicates(repo):
    data = load(repo)
    roster = data["roster"]
    names = [b["name"] for b in roster]
    assert len(names) == len(set(names)) and len(roster) > len(data["original"])
    example = json.loads((repo / "roster.example.json").read_text())["bands"]
    assert {b["name"] for b in example} <= set(names)


def test_every_generated_vote_is_four_valid_strings(repo):
    # Importing Locust monkey-patches the process for gevent, so the votes are drawn in a child.
    script = "import json, random, locustfile; random.seed(7); print(json.dumps([locustfile.random_vote() for _ in range(500)]))"
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=repo / "locust", env={**os.environ, "VOTE_SET": "roster"}, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    votes = json.loads(run.stdout)
    assert len({v["name"] for v in votes}) == len(load(repo)["roster"]), "every band gets votes"
    for vote in votes:
        assert set(vote) == {"name", "album", "year", "rank"}
        assert all(isinstance(v, str) and v for v in vote.values())
        assert 1900 <= int(vote["year"]) <= 2100
        assert 0 <= float(vote["rank"]) <= 100
