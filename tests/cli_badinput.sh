#!/bin/sh
# Bad input through the command line: damaged checkpoints written
# by this script (NaN weights for `inspect --check`, truncated and lying
# headers, missing or misshapen tensors, broken config.json), missing tokenizer
# files, paths that are not what they should be, and press parameters out of
# range, each with a non-zero exit and exactly one line on stderr naming the
# file or flag. The cases tests/cli_basic.sh and tests/cli_press.sh cover are
# not repeated. Run from the repository root with $PIKV set; ends with
# "cli_badinput: N passed, M failed".
. tests/lib/cli.sh
# le64 N: N as 8 bytes, little-endian.
le64() {
  n=$1 i=0
  while [ $i -lt 8 ]; do
    printf "\\$(printf '%03o' $((n % 256)))"
    n=$((n / 256)) i=$((i + 1))
  done
}

# write_model DIR NAN_IN OMIT ODD_DTYPE TRANSPOSE: a complete one-layer GPT-2
# checkpoint (d_model 2, vocab 2, 4 positions) of float32 zeros; each later
# argument names a tensor to damage, or is "-": NAN_IN gets a NaN as its first
# value, OMIT is left out, ODD_DTYPE is labelled FP8 (F8_E4M3), TRANSPOSE has
# its two dimensions swapped. Sets header_len to the length of the JSON header.
write_model() {
  d=$1 nan_in=$2 omit=$3 odd_dtype=$4 transpose=$5
  mkdir -p "$d"
  echo '{"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 2, "n_positions": 4, "vocab_size": 2}' \
    >"$d/config.json"
  header='{"__metadata__":{"format":"pt"}' off=0
  : >"$d/data"
  for t in wte.weight:2,2 wpe.weight:4,2 ln_f.weight:2 ln_f.bias:2 h.0.ln_1.weight:2 h.0.ln_1.bias:2 \
    h.0.attn.c_attn.weight:2,6 h.0.attn.c_attn.bias:6 h.0.attn.c_proj.weight:2,2 h.0.attn.c_proj.bias:2 \
    h.0.ln_2.weight:2 h.0.ln_2.bias:2 h.0.mlp.c_fc.weight:2,8 h.0.mlp.c_fc.bias:8 \
    h.0.mlp.c_proj.weight:8,2 h.0.mlp.c_proj.bias:2; do
    name=${t%%:*} shape=${t#*:}
    [ "$name" = "$omit" ] && continue
    count=1
    for dim in $(echo "$shape" | tr ',' ' '); do count=$((count * dim)); done
    bytes=$((count * 4)) dtype=F32
    [ "$name" = "$odd_dtype" ] && dtype=F8_E4M3 && bytes=$count
    [ "$name" = "$transpose" ] && shape="${shape#*,},${shape%%,*}"
    header="$header,\"$name\":{\"dtype\":\"$dtype\",\"shape\":[$shape],\"data_offsets\":[$off,$((off + bytes))]}"
    off=$((off + bytes))
    if [ "$name" = "$nan_in" ]; then
      printf '\000\000\300\177' >>"$d/data"
      bytes=$((bytes - 4))
    fi
    head -c "$bytes" /dev/zero >>"$d/data"
  done
  header="$header}" header_len=${#header}
  { le64 "$header_len"; printf '%s' "$header"; cat "$d/data"; } >"$d/model.safetensors"
  rm "$d/data"
}

# The base checkpoint is sound: the damaged ones below fail for their damage.
write_model "$dir/good" - - - -
good_header_len=$header_len
run inspect --check --model "$dir/good"
if [ "$rc" -eq 0 ] && grep -q "all weights finite" "$dir/out"; then ok
else not_ok "sound synthetic checkpoint: exit $rc, stderr: $(cat "$dir/err")"; fi

write_model "$dir/nan" h.0.mlp.c_fc.weight - - -
expect_error "inspect --check finds NaN weights" 1 "'h.0.mlp.c_fc.weight'" inspect --check --model "$dir/nan"
run inspect --model "$dir/nan"
if [ "$rc" -eq 0 ] && grep -q "first in 'h.0.mlp.c_fc.weight'" "$dir/out"; then ok
else not_ok "inspect without --check reports NaN weights: exit $rc, stdout: $(cat "$dir/out")"; fi

write_model "$dir/missing" - h.0.mlp.c_proj.bias - -
expect_error "missing tensor" 1 "missing tensor 'h.0.mlp.c_proj.bias'" inspect --model "$dir/missing"
write_model "$dir/fp8" - - ln_f.bias -
expect_error "unknown dtype" 1 "unknown dtype 'F8_E4M3'" inspect --model "$dir/fp8"
write_model "$dir/transposed" - - - h.0.attn.c_attn.weight
expect_error "wrong shape" 1 "has shape [6, 2], expected [2, 6]" inspect --model "$dir/transposed"

# Truncated and lying files: the message names model.safetensors.
mkdir -p "$dir/cut"
cp "$dir/good/config.json" "$dir/cut/"
size=$(wc -c <"$dir/good/model.safetensors")
# Empty, inside the length field, inside the header, right after it, inside the data.
for cut in 0 7 60 $((8 + good_header_len)) $((size - 1)); do
  head -c $cut "$dir/good/model.safetensors" >"$dir/cut/model.safetensors"
  expect_error "model.safetensors cut at byte $cut" 1 "$dir/cut/model.safetensors" inspect --model "$dir/cut"
done
{ le64 $((size + 1)); tail -c +9 "$dir/good/model.safetensors"; } >"$dir/cut/model.safetensors"
expect_error "header length past the end of the file" 1 "larger than the file" inspect --model "$dir/cut"
{ le64 2; printf '[]'; } >"$dir/cut/model.safetensors"
expect_error "header not an object" 1 "header is not a JSON object" inspect --model "$dir/cut"

# config.json damaged next to sound weights.
mkdir -p "$dir/config"
cp "$dir/good/model.safetensors" "$dir/config/"
printf '{"n_layer": 1, "n_head": 1,' >"$dir/config/config.json"
expect_error "config.json not JSON" 1 "$dir/config/config.json: invalid JSON" inspect --model "$dir/config"
echo '{"n_layer": 1, "n_embd": 2, "n_positions": 4, "vocab_size": 2}' >"$dir/config/config.json"
expect_error "config.json without n_head" 1 'missing "n_head"' inspect --model "$dir/config"
echo '{"n_layer": 1, "n_head": 0, "n_embd": 2, "n_positions": 4, "vocab_size": 2}' >"$dir/config/config.json"
expect_error "config.json with n_head 0" 1 '"n_head" must be an integer >= 1' inspect --model "$dir/config"
echo '{"n_layer": 2, "n_head": 1, "n_embd": 2, "n_positions": 4, "vocab_size": 2}' >"$dir/config/config.json"
expect_error "config.json with a layer the weights lack" 1 "missing tensor 'h.1." inspect --model "$dir/config"

# Paths that are not what they should be.
expect_error "--model is a file" 1 "$dir/good/config.json/config.json" inspect --model "$dir/good/config.json"
expect_error "--prompt-file is a directory" 1 "$dir" generate --prompt-file "$dir"
expect_error "--context-file missing" 1 "$dir/absent.txt" generate --context-file "$dir/absent.txt" --question " Why?"

# A sound model without its tokenizer files: generate names the missing file.
expect_error "no vocab.json" 1 "$dir/good/vocab.json" generate --model "$dir/good" --prompt hi
cp models/pikv-ref-14m/vocab.json "$dir/good/"
expect_error "no merges.txt" 1 "$dir/good/merges.txt" generate --model "$dir/good" --prompt hi
printf '{"hi": 0,' >"$dir/good/vocab.json"
expect_error "vocab.json not JSON" 1 "$dir/good/vocab.json: invalid JSON" tokenize --model "$dir/good"

# Press parameters out of range, the MoE router's included.
expect_error "experts < 1" 1 "experts=0" generate --prompt hi --press moe_router:0.3,experts=0
expect_error "top_k > experts" 1 "top_k=5 exceeds experts=4" generate --prompt hi --press moe_router:0.3,experts=4,top_k=5
expect_error "unknown router" 1 "unknown router 'nope'" generate --prompt hi --press moe_router:0.3,router=nope
expect_error "negative ratio" 1 "out of range [0, 1)" generate --prompt hi --press snapkv:-0.5
expect_error "ratio not a number" 1 "ratio=half" generate --prompt hi --press streaming_llm:half
expect_error "window of 0" 1 "window=0" generate --prompt hi --press snapkv:0.5,window=0
expect_error "duo pattern missing" 1 "$dir/nopattern/full_attention_heads.tsv" \
  generate --prompt hi --press "duo:0.5,pattern=$dir/nopattern"
mkdir -p "$dir/pattern"
printf '0.1\t0.9\n0.5\n' >"$dir/pattern/full_attention_heads.tsv"
echo '{"sink_size": 4, "recent_size": 64}' >"$dir/pattern/config.json"
expect_error "duo pattern with ragged rows" 1 "$dir/pattern/full_attention_heads.tsv" \
  generate --prompt hi --press "duo:0.5,pattern=$dir/pattern"

# Flag values that do not fit.
expect_error "integer flag past int" 2 "--max-new-tokens: must be in 0..16777216, got 99999999999" \
  generate --prompt hi --max-new-tokens 99999999999
expect_error "negative new tokens" 2 "--max-new-tokens: must be in 0..16777216, got -1" generate --prompt hi -n -1
expect_error "NaN temperature" 2 "--temperature" generate --prompt hi --temperature nan

# KV cache types: a name that is not one is refused before anything loads.
expect_error "unknown KV type" 2 "--kv-type: unknown KV type 'q5_0'" generate --prompt hi --kv-type q5_0
expect_error "unknown key type" 2 "--kv-type-k: unknown KV type 'F16'" bench --kv-type-k F16
expect_error "unknown value type" 2 "--kv-type-v: unknown KV type 'q8'" eval --kv-type-v q8
expect_error "empty KV type" 2 "--kv-type: unknown KV type ''" compare --kv-type ""

finish cli_badinput
