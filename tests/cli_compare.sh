#!/bin/sh
# End-to-end tests of `pikv compare` on the bundled model: the text report's
# shape, the JSON keys, --csv, the detailed run's files, the scenario notice,
# and one-line errors for bad options. Run from the repository root with $PIKV
# set; ends with "cli_compare: N passed, M failed".
. tests/lib/cli.sh
# One thread: on a busy machine, idle OpenMP threads spinning for a core cost more than they bring.
quick="--context-tokens 300 --reps 1 --tasks 2 -n 4 -t 1"
tiny="${PIKV_SHARED:-../shared}/fixtures/tiny-gpt2"
methods='knorm:{r};Sink and window=streaming_llm:0.5'

# shellcheck disable=SC2086
run compare $quick --methods "$methods" --csv "$dir/table.csv"
check "text run exits 0 ($(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
for heading in "Model:" "Device:" "Ratio:        0.5" "Context:      300 tokens" "Question:" \
  "Mode:         query-agnostic" "COMPARISON SUMMARY" "RELATIVE IMPROVEMENTS" "ANSWERS" "RECOMMENDATION"; do
  check "text has '$heading'" grep -qF -- "$heading" "$dir/out"
done
check "a block per method, the baseline added" [ "$(grep -c '^Testing ' "$dir/out")" -eq 3 ]
check "baseline block" grep -q '^Testing No Compression (none)' "$dir/out"
check "templated spec expanded" grep -q '^Testing knorm (knorm:0.5)' "$dir/out"
for line in "Memory:" "Time:" "Speed:" "Quality:"; do
  check "three '$line' lines" [ "$(grep -c "^   $line" "$dir/out")" -eq 3 ]
done
check "improvement vs the baseline" grep -q '^Sink and window vs No Compression:' "$dir/out"
check "memory reduction printed" grep -qE '^  Memory reduction: +[0-9.-]+%' "$dir/out"
check "improvement of knorm vs the baseline" grep -qE '^knorm vs No Compression:' "$dir/out"
check "progress line on stderr" grep -q 'compare: .*retrieval task' "$dir/err"
check "csv written" [ -s "$dir/table.csv" ]
check "csv header" grep -q '^sweep,x,name,press,context_tokens,kv_bytes,' "$dir/table.csv"
check "csv: one row per method" [ "$(wc -l <"$dir/table.csv")" -eq 4 ]
check "csv: spec with a comma is quoted" grep -q '^main,,knorm,knorm:0.5,300,' "$dir/table.csv"

# KV bytes from the model's shape: per (layer, head) entry, K and V of head_dim
# float32 values and a 4-byte position. No Compression holds all 300 context
# entries of every head; knorm:0.5 evicts floor(300 * 0.5) of them per head,
# so it holds exactly half.
config=models/pikv-ref-14m/config.json
shape() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" "$config" | head -n 1; }
n_layer=$(shape n_layer) n_head=$(shape n_head) n_embd=$(shape n_embd)
entry_bytes=$((2 * (n_embd / n_head) * 2 + 4))  # the command's default cache: f16 keys and values, an int32 position
full_bytes=$((300 * n_layer * n_head * entry_bytes))
kv_bytes_of() { awk -F, -v spec="$1" '$1 == "main" && $4 == spec { print $6 }' "$dir/table.csv"; }
check "entry bytes of the bundled model's shape ($entry_bytes)" [ "$entry_bytes" -eq 260 ]
check "none holds every entry: $(kv_bytes_of none) bytes, want $full_bytes" [ "$(kv_bytes_of none)" = "$full_bytes" ]
check "knorm:0.5 halves the KV cache: $(kv_bytes_of knorm:0.5) bytes, want $((full_bytes / 2))" \
  [ "$(kv_bytes_of knorm:0.5)" = "$((full_bytes / 2))" ]

# PiKVpress's comparison's three methods by default, and EPLB + Duo against Duo.
# shellcheck disable=SC2086
run compare $quick
check "default run exits 0 ($(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
for name in "No Compression (none)" "Duo Attention (duo:ratio=0.5)" \
  "EPLB + Duo Attention (eplb_duo:ratio=0.5,experts=4,top_k=2,eplb_share=0.7)"; do
  check "default method $name" grep -qF "Testing $name..." "$dir/out"
done
check "EPLB + Duo vs Duo" grep -q '^EPLB + Duo Attention vs Duo Attention:' "$dir/out"
check "additional reduction" grep -qE '^  Additional memory reduction: +[0-9.-]+%' "$dir/out"
# shellcheck disable=SC2086
run compare $quick --ratio 0.3 --experts 2 --top-k 1 --eplb-share 0.5 --json \
  --methods 'none;eplb_duo:ratio={r},experts={e},top_k={k},eplb_share={s}'
check "options fill the templates" grep -q '"press":"eplb_duo:ratio=0.3,experts=2,top_k=1,eplb_share=0.5"' "$dir/out"

# shellcheck disable=SC2086
run compare $quick --methods "$methods" --json --query-aware
check "json run exits 0" [ "$rc" -eq 0 ]
check "json is one line" [ "$(wc -l <"$dir/out")" -eq 1 ]
for key in model context_tokens mode machine threads methods improvements recommendation; do
  check "json has $key" grep -q "\"$key\":" "$dir/out"
done
for key in name press kv_bytes prefill_s compression_s decode_s decode_tok_s quality retrieval_acc ppl kl \
  top1_agree answer_agree prefill_s_min decode_tok_s_max; do
  check "json: $key in every method" [ "$(grep -o "\"$key\":" "$dir/out" | wc -l)" -ge 3 ]
done
check "json mode" grep -q '"mode":"query-aware"' "$dir/out"
check "json context length" grep -q '"context_tokens":300,' "$dir/out"

# The detailed run on the tiny GPT-2 fixture (256 positions): every sweep, in seconds.
run compare --model "$tiny" --context-tokens 128 --reps 1 --tasks 1 -n 2 -t 1 --methods 'knorm:{r}' \
  --detailed --out "$dir/sweep"
check "detailed run exits 0 ($(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
for f in compare.json compare.csv ratio_memory.svg ratio_decode_speed.svg ratio_retrieval.svg \
  context_memory.svg context_decode_speed.svg context_retrieval.svg; do
  check "detailed wrote $f" [ -s "$dir/sweep/$f" ]
done
check "no experts sweep without {e}" [ ! -e "$dir/sweep/experts_memory.svg" ]
check "svg: a polyline per method" [ "$(grep -c '<polyline' "$dir/sweep/ratio_memory.svg")" -eq 2 ]
check "svg closes" [ "$(tail -n 1 "$dir/sweep/context_retrieval.svg")" = "</svg>" ]
check "sweep points in the json" grep -q '"sweep":[[:space:]]*"context"' "$dir/sweep/compare.json"
check "sweep rows in the csv" grep -q '^ratio,0.3,knorm,knorm:0.3,128,' "$dir/sweep/compare.csv"
check "sweep tables in the text" grep -q '^SWEEP: CONTEXT LENGTH' "$dir/out"

# The notice comes before the methods are built, so a bad method ends the run at once.
run compare --scenario long-doc-qa --methods 'frob:0.5'
check "scenario capped with a notice" \
  grep -q "notice: scenario long-doc-qa asks for 4000 context tokens; capped at 2014" "$dir/err"

expect_error "ratio out of range" 2 "--ratio: must be in [0, 1), got 1.5" compare --ratio 1.5
expect_error "unknown scenario" 2 "--scenario: unknown scenario 'lecture' (known: long-doc-qa|chat|content)" \
  compare --scenario lecture
expect_error "reps 0" 2 "--reps: must be in 1..100, got 0" compare --reps 0
expect_error "top-k above experts" 2 "--top-k: must be in 1..2" compare --experts 2 --top-k 3
expect_error "context file without question" 2 "--context-file needs a --question" \
  compare --context-file data/haystack.txt
expect_error "context too long" 2 "--context-tokens: 3000 + 34 question and answer tokens exceed" \
  compare --context-tokens 3000
expect_error "empty method" 2 "--methods: method 2: empty press spec" compare --methods 'knorm:0.5;;none'
expect_error "unknown method spec" 1 "method 'frob:0.5': unknown press 'frob'" compare --methods 'frob:0.5' $quick
expect_error "unknown placeholder" 1 "unknown placeholder {x}" compare --methods 'knorm:{x}' $quick

finish cli_compare
