#!/bin/sh
# End-to-end tests of `pikv placement` on small batches: the bytes and the
# exchange it reports for caches whose sizes are known, EPLB's balance against
# the equal count on DuoAttention's caches, and one-line errors naming the
# flag at fault. Run from the repository root with $PIKV set; ends with
# "cli_placement: N passed, M failed".
. tests/lib/cli.sh
small="--batch 4 --tokens 200 --measure 2 --gpus 1,2,4"

# Without a press every one of 4 x 6 x 6 shards holds 200 entries of 260 bytes
# (f16 keys and values of 64, a 4-byte position): 7,488,000 bytes, a quarter
# on each of 4 GPUs. The equal count puts 12 of a layer's 24 shards on each of
# 2 GPUs, so each takes in 12 states of 264 bytes a layer: 19,008 a step.
run placement $small --press none --json
check "placement --json is one line" [ "$rc" -eq 0 -a "$(wc -l <"$dir/out")" -eq 1 ]
check "no press: every entry kept" grep -q '"press":"none","kept":1,"kv_bytes":7488000,' "$dir/out"
check "4 GPUs: a quarter of the bytes each" grep -q '"gpus":4,"kv_bytes_mean":1872000,"eplb":{"kv_bytes_max":1872000,' \
  "$dir/out"
check "2 GPUs, equal count: 19008 bytes in a step" \
  grep -q '"gpus":2,[^]]*"equal_count":{[^}]*"exchange_bytes_per_step":19008,' "$dir/out"
check "1 GPU: nothing exchanged" grep -q '"gpus":1,[^]]*"exchange_bytes_per_step":0,' "$dir/out"

# Whole sequences on GPUs: 2 of the 4 on each of 2 GPUs, half the bytes each,
# nothing exchanged; --rest-us is added to every step as given. On one GPU:
# 30,793,728 bytes of f16 weights (6.41536 us at 4,800 GB/s), 7,488,000 of KV
# (1.56 us) and the 100 us given.
run placement $small --press none --rest-us 100 --json
check "by sequence: 2 GPUs hold half the bytes each, exchange nothing" \
  grep -q '"gpus":2,[^]]*"by_sequence":{"kv_bytes_max":3744000,"load_max_over_mean":1,"slices":4,"split_shards":0,"exchange_bytes_per_step":0,' \
  "$dir/out"
check "the rest of the step is in every step" grep -q '"exchange_us":0,"rest_us":100,"step_us":107.97536}' "$dir/out"

# At 600 tokens DuoAttention keeps some heads whole and cuts the rest to a
# sink and a recent window, so an equal count of heads per GPU is uneven
# (above 1.05 on some GPU count) while EPLB's max/mean load stays at most the
# equal count's and under 1.05 on every one.
run placement --batch 4 --tokens 600 --measure 2 --gpus 1,2,4
rows=$(grep -c '^| [0-9]' "$dir/out")
check "duo:0.75 by default, a row per GPU count ($rows)" [ "$rc" -eq 0 -a "$rows" -eq 3 ]
check "duo:0.75 keeps part of the cache" grep -Eq '^press duo:0.75: [1-9][0-9]\.[0-9]% of entries kept' "$dir/out"
check "the step time is labelled a model" grep -q 'a model, not a measurement' "$dir/out"
check "the reuse of measured prefills is said" grep -q 'sequence b reusing prefill b mod 2' "$dir/out"
if awk -F'|' '/^\| [0-9]/ { if ($6 + 0 > $7 + 0 || $6 + 0 > 1.05) bad = 1; if ($7 + 0 > 1.05) skew = 1; n++ }
  END { exit bad || !skew || n != 3 }' "$dir/out"; then ok
else not_ok "EPLB against the equal count: $(grep '^| [0-9]' "$dir/out")"; fi

expect_error "zero GPUs" 2 "pikv placement: --gpus: '0'" placement --gpus 0
expect_error "not a list" 2 "pikv placement: --gpus: '2,x'" placement --gpus 2,x
expect_error "no HBM" 2 "pikv placement: --hbm-gbs: must be > 0, got 0" placement --hbm-gbs 0
expect_error "negative fixed cost" 2 "pikv placement: --ib-us: must be >= 0" placement --ib-us -3
expect_error "negative rest of the step" 2 "pikv placement: --rest-us: must be >= 0" placement --rest-us -1
expect_error "more prefills than sequences" 2 "pikv placement: --measure: 9" placement --batch 4 --measure 9
expect_error "past n_positions" 1 "pikv placement: --tokens: 4000 exceeds" placement --tokens 4000
expect_error "bad press" 1 "pikv placement: --press:" placement $small --press nosuchpress
expect_error "unknown option" 2 "pikv placement: unknown option '--gpu'" placement --gpu 2

finish cli_placement
