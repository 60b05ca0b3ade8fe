#!/usr/bin/env python3
"""Checks a `dagr train --timeline` file (Chrome trace JSON, dagr/train/timeline.h).

Usage: timeline_check.py FILE RANKS STEPS [MIN_BUCKETS]
Exits 1 naming the first broken property:
  - well-formed JSON with traceEvents, every rank named, nothing dropped;
  - on every track (pid, tid) the spans nest: none overlaps another partially;
  - per rank STEPS spans each of step, forward, backward, optimizer step and
    wait for communication, every wait inside a backward;
  - per rank and step exactly one communication span per bucket (buckets
    0..n-1 of that step, n >= MIN_BUCKETS), the same buckets on every rank,
    with bytes > 0, one after another in bucket order;
  - flow events pair up: each id has one "s" and one "f", on different ranks,
    each in the middle of a communication span of the same step and bucket, and every
    collective has RANKS - 1 pairs.
"""
import collections
import json
import sys


def fail(message):
    print("timeline check: " + message)
    sys.exit(1)


def ns(us):
    return round(us * 1000)


def main():
    path, ranks, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    min_buckets = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    try:
        with open(path) as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path} is not JSON: {e}")
    events = trace.get("traceEvents")
    if not isinstance(events, list) or not events:
        fail("no traceEvents")
    dropped = trace.get("otherData", {}).get("dropped_events", {})
    if any(dropped.values()):
        fail(f"events were dropped: {dropped}")

    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    if names != {r: f"rank {r}" for r in range(ranks)}:
        fail(f"process names {names}")
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e["name"] == "thread_name"}
    for r in range(ranks):
        if threads.get((r, 0)) != "training" or threads.get((r, 1)) != "communication":
            fail(f"rank {r}'s tracks are not named training and communication: {threads}")

    spans = [e for e in events if e.get("ph") == "X"]
    tracks = collections.defaultdict(list)
    for e in spans:
        e["start"], e["end"] = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        if e["end"] < e["start"]:
            fail(f"negative duration: {e}")
        tracks[(e["pid"], e["tid"])].append(e)
    # Nesting: sorted by start (longest first on ties), each span lies inside
    # the innermost open span that has not ended, or after it.
    for key, track in tracks.items():
        track.sort(key=lambda e: (e["start"], -e["end"]))
        stack = []
        for e in track:
            while stack and stack[-1]["end"] <= e["start"]:
                stack.pop()
            if stack and e["end"] > stack[-1]["end"]:
                fail(f"track {key}: {e['name']} [{e['start']}, {e['end']}] overlaps "
                     f"{stack[-1]['name']} [{stack[-1]['start']}, {stack[-1]['end']}] partially")
            stack.append(e)

    for r in range(ranks):
        training = tracks[(r, 0)]
        for name in ("step", "forward", "backward", "optimizer step", "wait for communication"):
            count = sum(e["name"] == name for e in training)
            if count != steps:
                fail(f"rank {r}: {count} '{name}' spans, expected {steps}")
        backwards = [e for e in training if e["name"] == "backward"]
        for w in (e for e in training if e["name"] == "wait for communication"):
            if not any(b["start"] <= w["start"] and w["end"] <= b["end"] for b in backwards):
                fail(f"rank {r}: a wait for communication at {w['ts']} is outside every backward")

    buckets = {}  # rank -> step -> sorted buckets
    for r in range(ranks):
        per_step = collections.defaultdict(list)
        for e in tracks[(r, 1)]:
            if e.get("cat") != "comm" or e["args"]["bytes"] <= 0:
                fail(f"rank {r}: a communication span without bytes: {e}")
            per_step[e["args"]["step"]].append(e)
        if len(per_step) != steps:
            fail(f"rank {r}: communication spans in {len(per_step)} steps, expected {steps}")
        for step, seen in per_step.items():
            order = [e["args"]["bucket"] for e in sorted(seen, key=lambda e: e["start"])]
            if sorted(order) != list(range(max(len(order), min_buckets))):
                fail(f"rank {r} step {step}: buckets {sorted(order)}, expected each of 0..n-1 once, n >= {min_buckets}")
            if order != sorted(order):
                fail(f"rank {r} step {step}: buckets ran in the order {order}")
        buckets[r] = {s: sorted(e["args"]["bucket"] for e in b) for s, b in per_step.items()}
    if any(buckets[r] != buckets[0] for r in range(ranks)):
        fail("the ranks' steps and buckets differ")

    flows = collections.defaultdict(list)
    for e in events:
        if e.get("ph") in ("s", "f"):
            flows[e["id"]].append(e)
    pairs = collections.Counter()
    for fid, points in flows.items():
        if sorted(p["ph"] for p in points) != ["f", "s"]:
            fail(f"flow {fid} has {[p['ph'] for p in points]}, expected one s and one f")
        if points[0]["pid"] == points[1]["pid"]:
            fail(f"flow {fid} stays on rank {points[0]['pid']}")
        # The collectives each end may belong to: the spans it sits in the
        # middle of (the producer's rule; "inside" alone is ambiguous where a
        # span has no length and sits where the one before it ends).
        candidates = []
        for p in points:
            at = ns(p["ts"])
            track = tracks[(p["pid"], 1)]
            if not any(e["start"] <= at <= e["end"] for e in track):
                fail(f"flow {fid}'s {p['ph']} at {p['ts']} lies in no communication span of rank {p['pid']}")
            middle = {(e["args"]["step"], e["args"]["bucket"]) for e in track
                      if e["start"] + (e["end"] - e["start"]) // 2 == at}
            if not middle:
                fail(f"flow {fid}'s {p['ph']} at {p['ts']} is not in the middle of a communication span of rank {p['pid']}")
            candidates.append(middle)
        keys = candidates[0] & candidates[1]
        if len(keys) != 1:
            fail(f"flow {fid} joins the collectives {candidates[0]} and {candidates[1]}, not one")
        pairs[keys.pop()] += 1
    collectives = {(s, b) for s, bs in buckets[0].items() for b in bs}
    if set(pairs) != collectives or any(n != ranks - 1 for n in pairs.values()):
        fail(f"{len(pairs)} collectives have flows, of {len(collectives)}; pairs per collective "
             f"{sorted(set(pairs.values()))}, expected {ranks - 1}")
    total = sum(len(b) for b in buckets[0].values())
    print(f"timeline check: {len(spans)} spans, {total} collectives per rank in {steps} steps, "
          f"{sum(pairs.values())} flow pairs: ok")


main()
