#!/bin/sh
# build-cuda/pikv on the GPU: generate --device cuda --weights f32 gives the
# CPU's greedy ids, bf16 (the GPU's default) the same first id; bench --device
# cuda reports graph replay, launches and the block pool, and runs without
# graphs too; presses on the GPU say how they ran (kvzip decided by the CPU
# engine; Duo's prefill_chunk runs; decoding(...) and moe_router with route=1
# generate the CPU's ids and bench one sequence, a batch of two refused in one
# line), --kv-budget plans the batch; generate with questions,
# compare (with its capacity table) and eval run their sessions on the GPU.
# Without a GPU it prints "skipped" and passes nothing. Run from the
# repository root; ends with "cli_cuda: N passed, M failed".
: "${PIKV:=build-cuda/pikv}"
. tests/lib/cli.sh

run generate --device cuda --prompt hi -n 1
if [ "$rc" -ne 0 ] && grep -q "CUDA device" "$dir/err"; then
  echo "cli_cuda: skipped ($(cat "$dir/err"))"
  finish cli_cuda
  exit
fi

prompt="The old lighthouse keeper climbed the stairs every evening to"
run generate --device cpu --weights f32 --prompt "$prompt" -n 24 --print-ids
cp "$dir/out" "$dir/cpu"
run generate --device cuda --weights f32 --prompt "$prompt" -n 24 --print-ids
check "generate --device cuda --weights f32: the CPU's 24 greedy ids" cmp -s "$dir/out" "$dir/cpu"
run generate --device cuda --prompt "$prompt" -n 24 --print-ids
check "generate --device cuda (bf16): the CPU's first greedy id" \
  test "$(cut -d' ' -f1 "$dir/out")" = "$(cut -d' ' -f1 "$dir/cpu")"
run generate --device cuda --prompt "$prompt" -n 8 --json
check "generate --device cuda --json: ids and KV bytes" grep -q '"kv_bytes"' "$dir/out"

run bench --device cuda -p 200 -n 16 -r 2 --batch 2
check "bench --device cuda: graph replay and launches" grep -q "kernel launches per step" "$dir/out"
check "bench --device cuda: the block pool" grep -q "KV pool .* MB (blocks of" "$dir/out"
run bench --device cuda -p 200 -n 16 -r 1 --no-graphs
check "bench --device cuda --no-graphs" grep -q "plain launches" "$dir/out"

run generate --device cuda --weights f32 --prompt "$prompt" -n 8 --press knorm:0.5
check "generate --device cuda --press: the press line" grep -q "press knorm:0.5: scored from measures computed on the GPU" "$dir/err"
run bench --device cuda -p 600 -n 16 -r 1 --press none --press duo:0.75 --batch 2
check "bench --device cuda --press: each press" test "$(grep -c "decided from positions alone" "$dir/out")" = 2
run bench --device cuda -p 1000 -n 32 -r 1 --press duo:0.75 --kv-budget 64MiB
check "bench --kv-budget: the capacity plan" grep -q "sequences admitted = floor(budget / per sequence)" "$dir/out"
run generate --device cuda --weights f32 --context-file data/README.md --press duo:0.75 -q "What is it?" -n 8
check "generate --device cuda with a question: an answer and the press line" \
  grep -q "press duo:0.75: decided from positions alone" "$dir/err"
expect_error "generate --device cuda --kv-type" 2 "the GPU stores the KV cache in the --weights type" \
  generate --device cuda --prompt hi --kv-type q8_0
run compare --device cuda --tasks 2 --reps 1 --context-tokens 600 -n 4 --kv-budget 64MiB
check "compare --device cuda: the GPU named in the header" grep -q "^Device: .*(--device cuda;" "$dir/out"
check "compare --device cuda: how each press ran" grep -q "Press:    decided from positions alone" "$dir/out"
check "compare --device cuda: the capacity table" grep -q "^CAPACITY AT A 0.06 GiB KV BUDGET" "$dir/out"
check "compare --device cuda: Duo fits more sequences than none" \
  awk '/^CAPACITY/ {t = 1} t && /^No Compression/ {n = $(NF-3)} t && /^Duo Attention/ {d = $(NF-3)} END {exit !(d > n && n > 0)}' "$dir/out"
run eval --device cuda --tasks 2 --press duo:0.75 --min-tokens 500 --max-tokens 600
check "eval --device cuda: an accuracy row" grep -q "| duo:0.75 .*query-agnostic" "$dir/out"
run bench --device cuda -p 300 -n 8 -r 1 --press kvzip:0.5
check "bench --device cuda --press kvzip: decided by the CPU engine, kept on the GPU" \
  grep -q "press kvzip:0.5: decided by the CPU engine on its own prefill" "$dir/out"
run bench --device cuda -p 600 -n 16 -r 1 --press duo:ratio=0.75,prefill_chunk=256
check "bench --device cuda --press duo with prefill_chunk: runs, decided from positions" \
  grep -q "press duo:ratio=0.75,prefill_chunk=256: decided from positions alone" "$dir/out"
# A press that keeps one sequence's state between calls: generate gives the
# CPU's greedy ids, bench runs one sequence and says how its steps ran, and a
# batch of two is refused naming what the press does.
one_sequence_press() {
  run generate --device cuda --weights f32 --prompt "$prompt" -n 24 --print-ids --press "$1"
  cp "$dir/out" "$dir/gpu_ids"
  run generate --device cpu --weights f32 --prompt "$prompt" -n 24 --print-ids --press "$1"
  check "generate --device cuda --press $1: the CPU's 24 greedy ids" cmp -s "$dir/out" "$dir/gpu_ids"
  run bench --device cuda -p 300 -n 24 -r 1 --press "$1"
  check "bench --device cuda --press $1: $2" grep -q "$2" "$dir/out"
  expect_error "bench --device cuda --press $1 --batch 2" 1 \
    "$3: on the GPU it runs one sequence (batch 1), through a session (generate, eval, compare) or bench --batch 1, not a batch of 2" \
    bench --device cuda -p 100 -n 4 -r 1 --batch 2 --press "$1"
}
one_sequence_press "decoding(knorm):every=4,target=8" "each step's queries to the press on the host" \
  "acts while decoding"
one_sequence_press "moe_router:ratio=0.5,window=8,route=1" "each step's queries routed on the host, layer by layer" \
  "routes later queries through its table (route=1)"
finish cli_cuda
