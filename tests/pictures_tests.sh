#!/usr/bin/env bash
# Pictures: `dagr train` draws OUT/curves.png and writes TensorBoard events
# (--tensorboard), read back here with an independent decoder: the record
# frames and CRC-32Cs checked in shell arithmetic, each Event decoded by
# `protoc --decode` against tests/tfevents.proto, the values compared with
# metrics.jsonl. `dagr bench --plot --peers` draws its bandwidth curves.
# Usage: pictures_tests.sh DAGR
set -uo pipefail
dagr=$1
here=$(cd "$(dirname "$0")" && pwd)
source "$here/testlib.sh"

# The width and height a PNG's IHDR says, or nothing for a file that is not a PNG.
png_size() {
  [ "$(head -c 8 "$1" | od -An -t x1 | tr -d ' \n')" = 89504e470d0a1a0a ] || return 0
  echo "$(od -An -t u1 -j 16 -N 8 "$1" | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}')"
}

# Masked CRC-32C (Castagnoli) of the bytes on stdin, as TFRecord frames store it.
masked_crc32c() {
  local crc=$((0xFFFFFFFF)) b k
  for b in $(od -An -v -t u1); do
    crc=$((crc ^ b))
    for k in 1 2 3 4 5 6 7 8; do crc=$(( crc & 1 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1 )); done
  done
  crc=$((crc ^ 0xFFFFFFFF))
  echo $(( ((crc >> 15 | crc << 17) + 0xa282ead8) & 0xFFFFFFFF ))
}

# Splits an event file into records; checks both CRCs of each; prints each
# Event decoded by protoc on one line. Exit 1 at the first bad frame.
decode_events() {
  local f=$1 size off=0 len
  size=$(stat -c %s "$f")
  while [ "$off" -lt "$size" ]; do
    len=$(od -An -t u8 -j "$off" -N 8 "$f" | tr -d ' ')
    [ "$(tail -c +$((off + 1)) "$f" | head -c 8 | masked_crc32c)" = "$(od -An -t u4 -j $((off + 8)) -N 4 "$f" | tr -d ' ')" ] ||
      { echo "bad length CRC at byte $off"; return 1; }
    [ "$(tail -c +$((off + 13)) "$f" | head -c "$len" | masked_crc32c)" = \
      "$(od -An -t u4 -j $((off + 12 + len)) -N 4 "$f" | tr -d ' ')" ] || { echo "bad data CRC at byte $off"; return 1; }
    tail -c +$((off + 13)) "$f" | head -c "$len" |
      protoc --decode=tensorflow.Event -I "$here" "$here/tfevents.proto" | tr '\n' ' ' | tr -s ' '
    echo
    off=$((off + 12 + len + 4))
  done
}

# A scalar's value in the decoded events: value TAG STEP.
value() { grep "step: $2 summary { value { tag: \"$1\" " "$tmp/events" | sed 's/.*simple_value: \([^ ]*\).*/\1/'; }
# Equal to 6 significant digits (a float32 of a double).
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-6 * (b < 0 ? -b : b) + 1e-9) }'; }

timeout 300 "$dagr" train --workers 2 --epochs 2 --hidden 32 --batch-size 256 --out "$tmp/run" \
  --tensorboard "$tmp/tb" > "$tmp/out" 2>&1
expect "train with --tensorboard runs" test $? -eq 0
expect "train draws OUT/curves.png (1200x500)" test "$(png_size "$tmp/run/curves.png")" = 1200x500
events=$(ls "$tmp"/tb/events.out.tfevents.* 2>/dev/null | head -1)
expect "train writes one event file" test -n "$events" -a "$(ls "$tmp/tb" | wc -l)" -eq 1
decode_events "$events" > "$tmp/events"
expect "every record's frame and CRCs check, every Event decodes" test $? -eq 0
expect "the first record is the file version" grep -q 'file_version: "brain.Event:2"' <(head -1 "$tmp/events")
# 2 epochs × (train/loss, train/accuracy, test/accuracy, rank0/loss, rank1/loss)
expect "ten scalars" test "$(grep -c simple_value "$tmp/events")" -eq 10
for epoch in 1 2; do
  line=$(grep "\"epoch\":$epoch," "$tmp/run/metrics.jsonl")
  field() { echo "$line" | sed "s/.*\"$1\":\([^,}]*\).*/\1/"; }
  rank1=$(echo "$line" | sed 's/.*"rank_train_loss":\[[^,]*,\([^]]*\)\].*/\1/')
  expect "epoch $epoch: train/loss is metrics.jsonl's" close "$(value train/loss $epoch)" "$(field train_loss)"
  expect "epoch $epoch: test/accuracy is metrics.jsonl's" close "$(value test/accuracy $epoch)" "$(field test_accuracy)"
  expect "epoch $epoch: rank1/loss is rank 1's in metrics.jsonl" close "$(value rank1/loss $epoch)" "$rank1"
done
# The checker can fail: one byte changed in the last record's data.
cp "$events" "$tmp/bad"
printf '\x00' | dd of="$tmp/bad" bs=1 seek=$(( $(stat -c %s "$tmp/bad") - 8 )) conv=notrunc 2>/dev/null
decode_events "$tmp/bad" > "$tmp/bad-events"
expect "a changed byte fails the data CRC" grep -q "bad data CRC" "$tmp/bad-events"

: > "$tmp/file"
"$dagr" train --workers 1 --epochs 1 --out "$tmp/run2" --tensorboard "$tmp/file/tb" > "$tmp/out" 2>&1
expect "an --tensorboard that cannot be a folder: exit 2, one line" \
  test $? -eq 2 -a "$(grep -c -- '--tensorboard .*cannot create the folder' "$tmp/out")" -eq 1

bench() { timeout 120 "$dagr" bench -n 2 --min 4K --max 64K --iters 3 --warmup 1 "$@"; }
printf 'label,bytes,busbw\nMPI,4096,0.5\nMPI,65536,2.5\n# a comment\ngloo,4096,0.1\ngloo,65536,0.9\n' > "$tmp/peers.csv"
bench --plot "$tmp/bw.png" --peers "$tmp/peers.csv" > "$tmp/out" 2>&1
expect "bench --plot --peers draws a 900x600 PNG" test $? -eq 0 -a "$(png_size "$tmp/bw.png")" = 900x600
printf 'MPI,4096,0.5\nMPI,lots,2.5\n' > "$tmp/bad.csv"
bench --plot "$tmp/bw2.png" --peers "$tmp/bad.csv" > "$tmp/out" 2>&1
expect "a bad peers line: exit 2, naming file and line" \
  test $? -eq 2 -a "$(grep -c "bad.csv:2: expected label,bytes,busbw" "$tmp/out")" -eq 1
bench --peers "$tmp/peers.csv" > "$tmp/out" 2>&1
expect "--peers without --plot: exit 2" test $? -eq 2

# Without gnuplot: training still succeeds (one warning), bench --plot fails with what to install.
mkdir -p "$tmp/nogp"
timeout 300 env PATH="$tmp/nogp" "$dagr" train --workers 1 --epochs 1 --hidden 16 --out "$tmp/run3" > "$tmp/out" 2>&1
expect "no gnuplot: train succeeds and says what to install" \
  test $? -eq 0 -a "$(grep -c 'warning: cannot draw .*gnuplot is not installed' "$tmp/out")" -eq 1
timeout 120 env PATH="$tmp/nogp" "$dagr" bench -n 2 --min 4K --max 8K --iters 3 --plot "$tmp/bw3.png" > "$tmp/out" 2>&1
expect "no gnuplot: bench --plot fails naming gnuplot-nox" test $? -eq 1 -a "$(grep -c gnuplot-nox "$tmp/out")" -ge 1

finish
