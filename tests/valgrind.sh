#!/bin/sh
# Runs `pikv generate` (plain, and with a composite press and a question) on
# the bundled model under valgrind's memcheck: any invalid access or
# definitely lost block fails. (`pikv compare` runs the same paths many times
# over; under memcheck it takes too long for CI and is covered by the
# sanitizer build instead.) The binary must be built without AVX-512 (valgrind does
# not decode it): `make test-valgrind` builds one in build-valgrind/.
set -u
: "${PIKV:=build-valgrind/pikv}"
# OMP_WAIT_POLICY set: otherwise pikv re-executes itself to set it, out of valgrind's sight.
export OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
vg="valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite"
passed=0 failed=0
run() {
  name=$1
  shift
  if $vg "$PIKV" "$@" >/dev/null 2>/tmp/pikv-valgrind.log; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name" >&2
    tail -n 30 /tmp/pikv-valgrind.log >&2
  fi
}
run "generate" generate --prompt "In the beginning God created" -n 4 -t 1
run "generate with a press and a question" generate --prompt-file data/README.md --press "adakv(snapkv):0.5" \
  --question " It is about" -n 3 -t 1
echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
