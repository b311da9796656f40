#!/bin/sh
# --weights on the commands that load a model: a bad value is one line naming
# the flag and the value; F16 weights give the greedy text of float32 weights,
# and inspect and bench say which type is in memory. Run from the repository
# root with $PIKV set; ends with "cli_weights: N passed, M failed".
. tests/lib/cli.sh

for cmd in bench eval compare inspect; do
  expect_error "$cmd --weights f17" 1 "pikv $cmd: --weights: unknown weight type 'f17'" $cmd --weights f17
done
expect_error "generate --weights f17" 1 "pikv generate: --weights: unknown weight type 'f17'" generate --weights f17 --prompt hi

prompt="The old lighthouse keeper climbed the stairs every evening to"
run generate --weights f32 --prompt "$prompt" -n 24 --greedy --print-ids
cp "$dir/out" "$dir/f32"
for w in f16 stored; do
  run generate --weights $w --prompt "$prompt" -n 24 --greedy --print-ids
  check "generate --weights $w: the 24 greedy ids of f32" cmp -s "$dir/out" "$dir/f32"
done

run inspect --weights f16
check "inspect --weights f16 names the type" grep -q "in memory      f16 matrices" "$dir/out"
run inspect --weights f32
check "inspect --weights f32 names float32" grep -q "in memory      float32," "$dir/out"
run inspect --weights stored
check "the bundled model is stored as F16" grep -q "in memory      f16 matrices" "$dir/out"

run bench --weights bf16 -p 32 -n 4 -r 1
check "bench names the weights" grep -q "bf16 weights" "$dir/out"
run bench --weights f16 -p 32 -n 4 -r 1 --json
check "bench --json names the weights" grep -q '"weights":"f16"' "$dir/out"

run eval --weights f16 --tasks 2 --min-tokens 200 --max-tokens 300
check "eval --weights f16 runs" [ "$rc" -eq 0 ]
check "eval --weights f16 reports an accuracy" grep -q "| none" "$dir/out"

finish cli_weights
