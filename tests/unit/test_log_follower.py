"""The log follower's bounds and the ``GET /logs`` reader's JSON decoding, piece by piece."""

from __future__ import annotations

import json
import random

from airflow_ray_train.hooks.log_follower import MAX_LINE_CHARS, MAX_MANIFEST_CHARS, LogFollower, LogReader
from airflow_ray_train_runtime.spec import MANIFEST_MARKER

ALPHABET = ["a", "b", " ", "\n", '"', "\\", "\\n", "\t", "é", "€", "😀", "\x1b[0m", "\u2028", "{", "}"]


def read_in_pieces(reply: bytes, rng: random.Random) -> tuple[list[str], LogFollower, LogReader]:
    follower = LogFollower()
    reader = LogReader(follower)
    shown: list[str] = []
    at = 0
    while at < len(reply):
        size = rng.choice([1, 2, 3, 5, 7, 64, 1000])
        shown += reader.feed(reply[at : at + size])
        at += size
    return shown + follower.flush(), follower, reader


def test_the_log_reader_decodes_the_reply_whatever_pieces_it_arrives_in():
    rng = random.Random(7)
    for ensure_ascii in (True, False):
        for _ in range(40):
            log = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 400)))
            reply = json.dumps({"logs": log}, ensure_ascii=ensure_ascii).encode()
            shown, follower, reader = read_in_pieces(reply, rng)
            whole = LogFollower()
            expected = whole.catch_up(log) + whole.flush()
            assert shown == expected and reader.done
            assert follower.offset == len(log)


def test_the_manifest_is_found_across_pieces_and_only_at_a_line_start():
    rng = random.Random(3)
    log = f"epoch 1\necho {MANIFEST_MARKER}x\n{MANIFEST_MARKER}" + '{"submission_id": "j"}\n' + "bye\n"
    shown, follower, _ = read_in_pieces(json.dumps({"logs": log}).encode(), rng)
    assert follower.manifest_line == MANIFEST_MARKER + '{"submission_id": "j"}'
    assert shown == ["epoch 1", f"echo {MANIFEST_MARKER}x", "bye"]


def test_a_long_line_is_cut_and_the_lines_after_it_are_whole():
    follower = LogFollower()
    long = "y" * (3 * MAX_LINE_CHARS)
    shown = []
    for start in range(0, len(long), 1000):  # it arrives in pieces, with no newline for a long while
        shown += follower.feed(long[start : start + 1000])
    shown += follower.feed("\nnext\n")
    assert shown == [f"{'y' * MAX_LINE_CHARS} [... line cut at {MAX_LINE_CHARS} characters]", "next"]
    assert follower.offset == len(long) + len("\nnext\n")  # a watcher restarting here repeats nothing


def test_the_manifest_may_be_longer_than_a_shown_line_but_not_without_bound():
    manifest = MANIFEST_MARKER + json.dumps({"metrics": "m" * (2 * MAX_LINE_CHARS)})
    follower = LogFollower()
    follower.feed(manifest + "\n")
    assert follower.manifest_line == manifest
    huge = LogFollower()
    huge.feed(MANIFEST_MARKER + "m" * (MAX_MANIFEST_CHARS + 10) + "\nafter\n")
    assert huge.manifest_line is None  # the result then comes from manifest.json in storage
