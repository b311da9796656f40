#!/bin/sh
# Runs every test program in $TEST_BIN and every CLI test script, adds up their
# "N passed, M failed" lines and ends with the total on one line.
# Exit status: non-zero when any check failed or any program crashed.
set -u
: "${TEST_BIN:=build/tests}" "${PIKV:=build/pikv}"
export PIKV
total_pass=0 total_fail=0 crashed=0
log=$(mktemp)
for t in "$TEST_BIN"/test_* tests/cli_*.sh tests/check_*.sh; do
  [ -e "$t" ] || continue
  case "$t" in *.d|*.o) continue ;; esac
  case "$t" in *.sh) cmd="sh $t" ;; *) cmd="$t" ;; esac
  $cmd >"$log" 2>&1
  rc=$?
  line=$(grep -E '^[A-Za-z0-9_.-]+: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "CRASH $t (exit $rc)"; sed 's/^/    /' "$log" | tail -n 30
    crashed=$((crashed + 1)); continue
  fi
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  if [ "$f" -gt 0 ] || [ "$rc" -ne 0 ]; then
    grep -v -E ': [0-9]+ passed, [0-9]+ failed$' "$log" | sed 's/^/    /' | tail -n 40
    [ "$f" -gt 0 ] || { echo "    (exit $rc)"; crashed=$((crashed + 1)); }
  fi
  echo "$line"
done
rm -f "$log"
total_fail=$((total_fail + crashed))
echo "tests: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
