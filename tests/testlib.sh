# Shared by the shell test suites: counting, asserting, a temp folder, refused flags.
failed=0 passed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ok()   { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
expect() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
# bad NAME FLAGS...: `$dagr train FLAGS` must be refused: exit 2 and one line.
bad() {
  local name=$1; shift
  timeout 60 "$dagr" train --epochs 1 --out "$tmp/bad" "$@" > "$tmp/bad.log" 2>&1
  local rc=$?
  expect "$name: exit 2 (got $rc)" test "$rc" -eq 2
  expect "$name: one line" test "$(wc -l < "$tmp/bad.log")" -eq 1
  cat "$tmp/bad.log"
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
