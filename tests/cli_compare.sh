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

check "kv-type sweep plots" [ -s "$dir/sweep/kv_type_memory.svg" ]
check "kv-type sweep in the json" grep -q '"kv_bytes_vs_f16":' "$dir/sweep/compare.json"

# The KV-type sweep on the bundled model (head_dim 64, a few tens of seconds):
# every method at the main ratio in an f16, q8_0 and q4_0 cache besides f32.
# An entry is K and V rows and a 4-byte position: f16 rows of 64 values take
# 128 bytes, q8_0 rows 2 blocks of 34 = 68, q4_0 rows 2 blocks of 18 = 36. No
# Compression keeps all 300 entries of every head whatever the type, and Duo
# keeps the same entries in every type, so their bytes scale exactly.
run compare --detailed --context-tokens 300 --tasks 2 --reps 1 -n 4 -t 1 --csv "$dir/kv.csv"
check "detailed kv-type run exits 0 ($(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
check "kv-type table in the text" grep -q '^SWEEP: KV CACHE TYPE' "$dir/out"
check "kv-type table: bytes vs f32 and f16" grep -qE 'KV bytes +vs f32 cache +vs f16 cache' "$dir/out"
check "csv: kv-type columns" grep -q ',mode,kv_type,kv_bytes_vs_f32,kv_bytes_vs_f16$' "$dir/kv.csv"
hd=$((n_embd / n_head))
entries=$((300 * n_layer * n_head))
# kv_bytes of the kv_type row of a comma-free spec in a type; $(NF-2) is the kv_type column.
kv_row() { awk -F, -v spec="$1" -v t="$2" '$1 == "kv_type" && $4 == spec && $(NF-2) == t { print $6 }' "$dir/kv.csv"; }
for t in f16 q8_0 q4_0; do
  for spec in none duo:ratio=0.5; do
    check "kv_type row of $spec in $t" [ -n "$(kv_row "$spec" "$t")" ]
  done
done
check "none in f16: $(kv_row none f16) bytes, want $((entries * (2 * 2 * hd + 4)))" \
  [ "$(kv_row none f16)" = "$((entries * (2 * 2 * hd + 4)))" ]
check "none in q8_0: $(kv_row none q8_0) bytes, want $((entries * (2 * hd / 32 * 34 + 4)))" \
  [ "$(kv_row none q8_0)" = "$((entries * (2 * hd / 32 * 34 + 4)))" ]
check "none in q4_0: $(kv_row none q4_0) bytes, want $((entries * (2 * hd / 32 * 18 + 4)))" \
  [ "$(kv_row none q4_0)" = "$((entries * (2 * hd / 32 * 18 + 4)))" ]
duo_f16=$(kv_row duo:ratio=0.5 f16) duo_q8=$(kv_row duo:ratio=0.5 q8_0) duo_q4=$(kv_row duo:ratio=0.5 q4_0)
check "duo: q8_0 holds 140/260 of f16 ($duo_q8 vs $duo_f16)" [ $((duo_q8 * 260)) -eq $((duo_f16 * 140)) ]
check "duo: q4_0 holds 76/260 of f16 ($duo_q4 vs $duo_f16)" [ $((duo_q4 * 260)) -eq $((duo_f16 * 76)) ]
# Every method (EPLB + Duo's spec holds commas, so by its name and the last
# column, the bytes over No Compression's in f16): q4_0 < q8_0 < f16.
vs_f16() { awk -F, -v name="$1" -v t="$2" '$1 == "kv_type" && $3 == name && $(NF-2) == t { print $NF }' "$dir/kv.csv"; }
for name in "No Compression" "Duo Attention" "EPLB + Duo Attention"; do
  check "$name: q4_0 < q8_0 < f16 ($(vs_f16 "$name" q4_0) $(vs_f16 "$name" q8_0) $(vs_f16 "$name" f16))" \
    awk -v a="$(vs_f16 "$name" q4_0)" -v b="$(vs_f16 "$name" q8_0)" -v c="$(vs_f16 "$name" f16)" \
    'BEGIN { exit !(a != "" && a + 0 < b + 0 && b + 0 < c + 0) }'
done
check "none in f16 is the f16 reference" [ "$(vs_f16 "No Compression" f16)" = 1 ]
check "the recommendation names a kv type" \
  grep -qE '^  .* with a (f32|f16|bf16|q8_0|q4_0) KV cache at [0-9]+ context tokens: [0-9]+ KV bytes' "$dir/out"

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
