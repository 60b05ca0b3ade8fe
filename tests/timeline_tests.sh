#!/usr/bin/env bash
# `dagr train --timeline`: a short run on 2 workers writes one merged Chrome
# trace that tests/timeline_check.py finds well-formed (spans nested per
# track, one communication span per bucket per step per rank, flow ids paired
# across the ranks); the checker rejects the same file with one communication
# span removed, or with a flow's end on the wrong rank; a --timeline in a
# folder that does not exist, or beside --pipeline-parallel, fails with one
# line and exit 2.
# Usage: timeline_tests.sh DAGR
set -uo pipefail
dagr=$1
source "$(dirname "$0")/testlib.sh"
check="$(dirname "$0")/timeline_check.py"
steps=24

# Buckets of 10 KiB: the MLP's gradients in 2 (the last layer's and the first's).
timeout 120 "$dagr" train --workers 2 --epochs 1 --max-steps $steps --batch-size 32 --bucket-cap-mb 0.01 --out "$tmp/run" \
  --timeline "$tmp/timeline.json" > "$tmp/out" 2>&1
expect "a run with --timeline succeeds" test $? -eq 0
expect "it says where the timeline is" grep -q "^Timeline (Chrome trace: .*) in $tmp/timeline.json$" "$tmp/out"
expect "one merged file, no parts left" test -s "$tmp/timeline.json" -a "$(ls "$tmp" | grep -c timeline)" -eq 1
expect "the timeline passes every check (2 buckets a step)" python3 "$check" "$tmp/timeline.json" 2 $steps 2

# The checker can fail: a communication span removed, a flow's end moved to its start's rank.
python3 - "$tmp/timeline.json" "$tmp/missing.json" "$tmp/moved.json" <<'EOF'
import json, sys
trace = json.load(open(sys.argv[1]))
events = trace["traceEvents"]
i = next(i for i, e in enumerate(events) if e.get("cat") == "comm" and e.get("ph") == "X")
json.dump(dict(trace, traceEvents=events[:i] + events[i + 1:]), open(sys.argv[2], "w"))
s = next(e for e in events if e.get("ph") == "s")
f = next(e for e in events if e.get("ph") == "f" and e["id"] == s["id"])
f["pid"] = s["pid"]
json.dump(trace, open(sys.argv[3], "w"))
EOF
expect "a missing communication span is caught" bash -c "! python3 '$check' '$tmp/missing.json' 2 $steps"
expect "a flow within one rank is caught" bash -c "! python3 '$check' '$tmp/moved.json' 2 $steps"

timeout 60 "$dagr" train --epochs 1 --out "$tmp/bad" --timeline "$tmp/no/such/folder/t.json" > "$tmp/bad.log" 2>&1
rc=$?
expect "--timeline in a missing folder: exit 2 (got $rc)" test $rc -eq 2
expect "--timeline in a missing folder: one line" test "$(wc -l < "$tmp/bad.log")" -eq 1
cat "$tmp/bad.log"
timeout 60 "$dagr" train --workers 2 --pipeline-parallel 2 --epochs 1 --out "$tmp/bad" --timeline "$tmp/t.json" > "$tmp/bad.log" 2>&1
rc=$?
expect "--timeline with --pipeline-parallel: exit 2, one line (got $rc)" test $rc -eq 2 -a "$(wc -l < "$tmp/bad.log")" -eq 1
cat "$tmp/bad.log"
finish
