#!/bin/sh
# End-to-end tests of `pikv generate`, `tokenize`, `inspect` and `bench` on the
# bundled model: real outputs, and for every bad input a non-zero exit with one
# line on stderr that names the flag or file. Run from the repository root with
# $PIKV set; ends with "cli_basic: N passed, M failed".
. tests/lib/cli.sh

run --help
check "pikv --help" [ "$rc" -eq 0 ]
run generate --help
check "generate --help shows usage" grep -q "usage: pikv generate" "$dir/out"

# Ids from the Hugging Face tokenizer (fixtures/tokenizer_golden.json, "Hello world").
printf 'Hello world' | "$PIKV" tokenize >"$dir/out" 2>"$dir/err"
check "tokenize Hello world" [ "$(cat "$dir/out")" = "4853 461 2033" ]

run generate --prompt "The quick brown fox jumps over the lazy dog." -n 8 --print-ids
check "generate prints 8 ids" [ "$(wc -w <"$dir/out")" -eq 8 ]
run generate --prompt "In the beginning" -n 5 --json
for key in prompt_tokens ids text prefill_s decode_s decode_tok_s kv_bytes; do
  check "generate --json has $key" grep -q "\"$key\":" "$dir/out"
done
# 3 prompt tokens and 4 decoded ones fill a first step of 64 entries in each of
# the 36 heads; q8_0 keys (2 blocks of 34 bytes) and f16 values (128 bytes)
# with a 4-byte position make 200 bytes an entry, against f32's 516.
run generate --prompt "In the beginning" -n 5 --json --kv-type q8_0 --kv-type-v f16
check "generate --kv-type q8_0 --kv-type-v f16 holds 36 x 64 x 200 bytes" grep -q '"kv_bytes":460800' "$dir/out"
run generate --prompt "In the beginning" -n 12 --temperature 0.9 --top-k 40 --top-p 0.95 --seed 7
cp "$dir/out" "$dir/seed7a"
run generate --prompt "In the beginning" -n 12 --temperature 0.9 --top-k 40 --top-p 0.95 --seed 7
check "same seed, same text" cmp -s "$dir/out" "$dir/seed7a"

run inspect --check
check "inspect --check on the bundled model" [ "$rc" -eq 0 ]
check "inspect shows the parameter count" grep -q "14.58 M" "$dir/out"
run bench -p 32 -n 4 -r 1 --json
check "bench --json reports both phases" grep -q '"decode_tok_s"' "$dir/out"

expect_error "unknown command" 2 "unknown command 'frobnicate'" frobnicate
expect_error "unknown flag" 2 "unknown option '--frobnicate'" generate --prompt hi --frobnicate
expect_error "both prompt flags" 2 "exactly one of --prompt, --prompt-file and --context-file" generate --prompt a --prompt-file b
expect_error "no prompt" 2 "exactly one of --prompt, --prompt-file and --context-file" generate
expect_error "non-integer" 2 "--max-new-tokens: 'abc' is not an integer" generate --prompt hi --max-new-tokens abc
expect_error "missing value" 2 "--seed needs a value" generate --prompt hi --seed
expect_error "top-p out of range" 2 "--top-p: must be in (0, 1]" generate --prompt hi --top-p 1.5
expect_error "temperature zero" 2 "--temperature: must be > 0" generate --prompt hi --temperature 0
expect_error "greedy and sampling" 2 "--greedy cannot be combined" generate --prompt hi --greedy --seed 3
expect_error "missing prompt file" 1 "$dir/absent.txt" generate --prompt-file "$dir/absent.txt"
expect_error "missing model" 1 "$dir/nomodel/config.json" generate --model "$dir/nomodel" --prompt hi
printf 'abc \377\376 def' >"$dir/bad-utf8.txt"
expect_error "invalid UTF-8" 1 "invalid UTF-8" generate --prompt-file "$dir/bad-utf8.txt"
printf '' >"$dir/empty.txt"
expect_error "empty prompt" 1 "the text is empty" generate --prompt-file "$dir/empty.txt"
i=0
while [ $i -lt 700 ]; do printf 'one two three ' ; i=$((i + 1)); done >"$dir/long.txt"
expect_error "prompt past n_positions" 1 "n_positions" generate --prompt-file "$dir/long.txt"
expect_error "bench zero prompt" 2 "--prompt-tokens: must be in 1..16777216, got 0" bench -p 0
expect_error "bench past context" 2 "exceed the model's 2048 positions" bench -p 2048 -n 10
printf '\377' | "$PIKV" tokenize >"$dir/out" 2>"$dir/err"
rc=$?
check "tokenize invalid UTF-8 fails" [ "$rc" -eq 1 ]
check "tokenize invalid UTF-8 names stdin" grep -q "^pikv tokenize: stdin: invalid UTF-8" "$dir/err"

finish cli_basic
