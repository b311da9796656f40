# Shared helpers of the CLI test scripts (tests/cli_*.sh), sourced by each.
# Sets up a temporary directory $dir (removed on exit) and the counters that
# `finish NAME` reports as "NAME: N passed, M failed".
set -u
: "${PIKV:=build/pikv}"
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); }
not_ok() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

# run ARGS...: run pikv; stdout in $dir/out, stderr in $dir/err, status in $rc.
run() {
  "$PIKV" "$@" >"$dir/out" 2>"$dir/err"
  rc=$?
}

# check NAME COMMAND...: the command succeeds.
check() {
  name=$1
  shift
  if "$@"; then ok; else not_ok "$name"; fi
}

# expect_error NAME RC NEEDLE ARGS...: `pikv ARGS` exits with RC and prints
# exactly one line on stderr, containing NEEDLE.
expect_error() {
  name=$1 want=$2 needle=$3
  shift 3
  run "$@"
  if [ "$rc" -eq "$want" ] && [ "$(wc -l <"$dir/err")" -eq 1 ] && grep -qF -- "$needle" "$dir/err"; then
    ok
  else
    not_ok "$name: exit $rc (want $want), stderr: $(cat "$dir/err")"
  fi
}

# finish NAME: the closing line, and the exit status.
finish() {
  echo "$1: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
