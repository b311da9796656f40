#!/bin/sh
# End-to-end tests of presses through the CLI: `pikv generate --press` with a
# context and questions, its JSON report, `pikv bench --press`, `pikv eval`, and
# one-line errors for bad press specs and flag combinations. Run from the
# repository root with $PIKV set; ends with "cli_press: N passed, M failed".
. tests/lib/cli.sh
head -c 3000 data/haystack.txt >"$dir/context.txt"
printf ' The pass key is 48213. Remember it. 48213 is the pass key. ' >>"$dir/context.txt"
tail -c 1500 data/haystack.txt >>"$dir/context.txt"

run generate --context-file "$dir/context.txt" --question " What is the pass key? The pass key is" -n 6 --json
check "no press answers the pass key" grep -q '"text":" 48213' "$dir/out"
for key in press mode kv_bytes_before kv_bytes_after compression_s answers decode_tok_s; do
  check "pipeline --json has $key" grep -q "\"$key\":" "$dir/out"
done
run generate --context-file "$dir/context.txt" --question " What is the pass key? The pass key is" \
  --question " The text above is about" --press knorm:0.5 -n 4 --json
check "two questions, two answers" [ "$(grep -o '"question":' "$dir/out" | wc -l)" -eq 2 ]
before=$(sed -E 's/.*"kv_bytes_before":([0-9]+).*/\1/' "$dir/out")
after=$(sed -E 's/.*"kv_bytes_after":([0-9]+).*/\1/' "$dir/out")
# floor(L / 2) entries per head: half the bytes, less at most one token's worth (18,576 bytes).
check "knorm:0.5 halves the KV bytes ($before -> $after)" \
  [ "$((after * 2))" -le "$before" -a "$((after * 2 + 18576))" -ge "$before" ]
run generate --context-file "$dir/context.txt" --question " What is the pass key? The pass key is" \
  --press snapkv:0.5 --query-aware -n 4 --json
check "query-aware mode is reported" grep -q '"mode":"query-aware"' "$dir/out"

run bench -p 256 -n 8 -r 1 --press none --press knorm:0.5 --json
check "bench --press reports each press" [ "$(grep -o '"press":' "$dir/out" | wc -l)" -eq 2 ]
run eval --tasks 2 --min-tokens 300 --max-tokens 400 --press none --press streaming_llm:0.5
check "eval prints a row per press" [ "$(grep -c '^| none\|^| streaming_llm' "$dir/out")" -eq 2 ]
check "eval: no routing columns for presses that do not route" grep -q '^| none .*| *- | *- |' "$dir/out"
# Query-time routing: top_k = experts reads everything and misses nothing; top_k=1 reads part of the cache.
run eval --tasks 2 --min-tokens 300 --max-tokens 400 --press moe_router:ratio=0.3,experts=2,top_k=2,route=1 \
  --press moe_router:ratio=0.3,experts=4,top_k=1,route=1
check "eval: top_k = experts reads 100% and misses 0%" grep -q 'top_k=2,route=1 .*| *100.0% | *0.0% |' "$dir/out"
check "eval: top_k=1 of 4 reads part of the cache" grep -Eq 'top_k=1,route=1 .*% \| +[1-9][0-9]?\.[0-9]% \| +[0-9.]+% \|' "$dir/out"
run generate --context-file "$dir/context.txt" --question " What is the pass key? The pass key is" \
  --press moe_router:ratio=0.3,top_k=1,route=1 -n 4 --json
check "generate --json reports the routing" grep -Eq '"routing":\{"queries":[1-9][0-9]*,"fraction_read":0\.' "$dir/out"

expect_error "unknown press" 1 "--press: unknown press 'nope'" generate --prompt hi --press nope:0.5
expect_error "ratio out of range" 1 "out of range [0, 1)" generate --prompt hi --press knorm:1.5
expect_error "spec syntax" 1 "position 6" generate --prompt hi --press "knorm:"
expect_error "query-aware without question" 2 "--query-aware needs at least one --question" \
  generate --context-file "$dir/context.txt" --query-aware
expect_error "sampling with a press" 2 "answer greedily" generate --prompt hi --press knorm:0.5 --temperature 0.7
expect_error "bench bad press" 1 "--press: unknown press" bench -p 16 -n 1 -r 1 --press frob
expect_error "route=1 inside a composition" 1 "must be the outermost press" \
  generate --prompt hi --press "composed[moe_router:ratio=0.3,route=1,knorm:0.2]"
expect_error "route=1 with workers" 1 "does not run on placed workers" \
  generate --context-file "$dir/context.txt" --question " The pass key is" --press moe_router:0.3,route=1 --workers 2
expect_error "eval bad range" 2 "--min-tokens/--max-tokens" eval --min-tokens 500 --max-tokens 100

finish cli_press
