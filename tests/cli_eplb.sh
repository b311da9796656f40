#!/bin/sh
# End-to-end tests of `pikv eplb`. Run from the repository root with $PIKV set to
# the pikv binary. Ends with "cli_eplb: N passed, M failed"; exit status non-zero
# when any check failed.
. tests/lib/cli.sh
# expect_output NAME FILE WANT: `pikv eplb --input FILE` succeeds and prints WANT.
expect_output() {
  run eplb --input "$2"
  if [ "$rc" -eq 0 ] && [ "$(cat "$dir/out")" = "$3" ] && [ ! -s "$dir/err" ]; then
    ok
  else
    not_ok "$1: exit $rc, stdout '$(cat "$dir/out")', stderr '$(cat "$dir/err")'"
  fi
}

# expect_input_error NAME RC FILE NEEDLE: `pikv eplb --input FILE` exits with RC,
# prints nothing on stdout and one line on stderr that starts with
# "pikv eplb: FILE: " and contains NEEDLE.
expect_input_error() {
  run eplb --input "$3"
  err=$(cat "$dir/err")
  lines=$(wc -l <"$dir/err")
  case "$err" in
    "pikv eplb: $3: "*"$4"*) prefix_ok=1 ;;
    *) prefix_ok=0 ;;
  esac
  if [ "$rc" -eq "$2" ] && [ "$lines" -eq 1 ] && [ "$prefix_ok" -eq 1 ] && [ ! -s "$dir/out" ]; then
    ok
  else
    not_ok "$1: exit $rc (want $2), stderr '$err' (want 'pikv eplb: $3: ...$4...')"
  fi
}

example='{"weight": [[50, 5, 30, 10, 20, 5]], "num_replicas": 8, "num_groups": 3, "num_nodes": 2, "num_gpus": 4}'
example_out='{"phy2log":[[0,1,0,5,4,3,2,2]],"log2phy":[[[0,2],[1,-1],[6,7],[5,-1],[4,-1],[3,-1]]],"logcnt":[[2,1,2,1,1,1]]}'
one='{"weight": [[8]], "num_replicas": 1, "num_groups": 1, "num_nodes": 1, "num_gpus": 1}'
one_out='{"phy2log":[[0]],"log2phy":[[[0]]],"logcnt":[[1]]}'

printf '%s\n' "$example" >"$dir/example.json"
expect_output "worked example" "$dir/example.json" "$example_out"

printf '[%s,\n %s]\n' "$one" "$example" >"$dir/list.json"
expect_output "list input" "$dir/list.json" "[$one_out,$example_out]"

expect_input_error "missing file" 1 "$dir/absent.json" "No such file"

printf '{"weight": [[1, 2]], "num_replicas": 2,\n' >"$dir/truncated.json"
expect_input_error "bad JSON" 1 "$dir/truncated.json" "invalid JSON"

printf '{"weight": [[1, 2, 3, 4]], "num_replicas": 6, "num_groups": 1, "num_nodes": 1, "num_gpus": 4}\n' \
  >"$dir/indivisible.json"
expect_input_error "R not divisible by D" 1 "$dir/indivisible.json" \
  "num_replicas (6) must be a multiple of num_gpus (4)"

printf '{"weight": [[1, 2]], "num_replicas": 2, "num_groups": 1, "num_nodes": 1}\n' \
  >"$dir/missing_key.json"
expect_input_error "missing key" 1 "$dir/missing_key.json" 'missing key "num_gpus"'

printf '[%s, {"weight": [[1, 2], [3]], "num_replicas": 2, "num_groups": 1, "num_nodes": 1, "num_gpus": 1}]\n' \
  "$one" >"$dir/ragged.json"
expect_input_error "ragged rows in a list item" 1 "$dir/ragged.json" \
  "item 1: weight[1] has 1 entries but weight[0] has 2"

: >"$dir/empty.json"
expect_input_error "empty file" 1 "$dir/empty.json" "empty"

run eplb --input "$dir/example.json" --x
if [ "$rc" -eq 2 ] && [ "$(cat "$dir/err")" = "pikv eplb: unknown option '--x'" ]; then ok
else not_ok "unknown option: exit $rc, stderr '$(cat "$dir/err")'"; fi

run eplb
if [ "$rc" -eq 2 ] && grep -q -- "--input" "$dir/err"; then ok
else not_ok "no --input: exit $rc, stderr '$(cat "$dir/err")'"; fi

run eplb --help
if [ "$rc" -eq 0 ] && grep -q "usage: pikv eplb --input FILE.json" "$dir/out"; then ok
else not_ok "--help: exit $rc, stdout '$(cat "$dir/out")'"; fi

finish cli_eplb
