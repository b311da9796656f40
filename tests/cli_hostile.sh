#!/bin/sh
# Hostile inputs through the command line: integer flags at the limits of int,
# FIFOs and devices where files are expected (each run under a timeout, so a
# regression that blocks in open() or reads without end fails instead of
# hanging), files larger than their format allows, and a tokenizer that does
# not belong to its model. Each case: a non-zero exit and one line on stderr
# naming the flag or file. Run from the repository root with $PIKV set; ends
# with "cli_hostile: N passed, M failed".
. tests/lib/cli.sh
# Every run here is bounded: 124 (timeout's status) is never the expected one.
run() {
  timeout 120 "$PIKV" "$@" >"$dir/out" 2>"$dir/err" </dev/null
  rc=$?
}
tiny="$(cd "${PIKV_SHARED:-../shared}/fixtures/tiny-gpt2" && pwd)"

# ---- integer flags at their limits -----------------------------------------
for v in 2147483647 -1 99999999999; do
  expect_error "generate -n $v" 2 "--max-new-tokens: must be in 0..16777216, got $v" generate --prompt hi -n "$v"
  expect_error "bench -p $v" 2 "--prompt-tokens: must be in 1..16777216, got $v" bench -p "$v"
  expect_error "duo-calibrate --sink $v" 2 "--sink: must be in 0..16777216, got $v" \
    duo-calibrate --sink "$v" --out "$dir/never-written"
  expect_error "eval --max-tokens $v" 2 "--max-tokens: must be in 64..16777216, got $v" eval --max-tokens "$v"
  expect_error "compare -n $v" 2 "--max-new-tokens: must be in 2..16777216, got $v" compare -n "$v"
done
check "duo-calibrate wrote no pattern for a rejected --sink" [ ! -e "$dir/never-written" ]
expect_error "eval --threads -1" 2 "--threads: must be in 0..4096, got -1" eval --threads -1
expect_error "duo-calibrate --threads -1" 2 "--threads: must be in 0..4096, got -1" duo-calibrate --threads -1
expect_error "bench --reps past int" 2 "--reps: must be in 1..100, got 4294967296" bench --reps 4294967296
# In range for the parser, past what the bundled model holds (2,048 positions): refused before allocating.
expect_error "bench -p past n_positions" 2 "exceed the model's 2048 positions" bench -p 16777216 -n 16777216
expect_error "generate -n past n_positions" 1 "n_positions" generate --prompt hi -n 16777216
expect_error "eval --max-tokens past n_positions" 1 "exceeds the model's 2048 positions" \
  eval --min-tokens 64 --max-tokens 16777216

# ---- files that are not regular files ----------------------------------------
mkfifo "$dir/fifo"
expect_error "--prompt-file FIFO" 1 "--prompt-file: $dir/fifo: not a regular file (a FIFO)" \
  generate --prompt-file "$dir/fifo"
expect_error "--context-file FIFO" 1 "--context-file: $dir/fifo: not a regular file (a FIFO)" \
  generate --context-file "$dir/fifo" --question " x"
expect_error "eval --haystack FIFO" 1 "--haystack: $dir/fifo: not a regular file (a FIFO)" \
  eval --tasks 1 --haystack "$dir/fifo"
expect_error "eplb --input FIFO" 1 "pikv eplb: $dir/fifo: not a regular file (a FIFO)" eplb --input "$dir/fifo"
expect_error "eplb --input /dev/zero" 1 "pikv eplb: /dev/zero: not a regular file (a device)" eplb --input /dev/zero
expect_error "eplb --input a directory" 1 "pikv eplb: $dir: not a regular file (a directory)" eplb --input "$dir"
# A sparse file past the 64 MiB an EPLB input (JSON) may hold: refused without reading it.
truncate -s 65M "$dir/huge.json"
expect_error "eplb --input past 64 MiB" 1 "is more than such a file may hold" eplb --input "$dir/huge.json"

# Standard input without end: read up to the 256 MiB a text may hold, then refused.
timeout 120 "$PIKV" tokenize </dev/zero >/dev/null 2>"$dir/err"
rc=$?
check "tokenize </dev/zero stops (exit $rc)" [ "$rc" -eq 1 ] && grep -q "stdin: more than 268435456 bytes" "$dir/err"

# A model directory whose files are FIFOs or devices, one at a time.
mkdir "$dir/model"
for f in config.json model.safetensors vocab.json merges.txt; do ln -s "$tiny/$f" "$dir/model/$f"; done
for f in config.json model.safetensors vocab.json merges.txt; do
  rm "$dir/model/$f"
  mkfifo "$dir/model/$f"
  expect_error "$f a FIFO" 1 "$dir/model/$f: not a regular file (a FIFO)" generate --model "$dir/model" --prompt hi
  rm "$dir/model/$f"
  ln -s /dev/zero "$dir/model/$f"
  expect_error "$f is /dev/zero" 1 "$dir/model/$f: not a regular file (a device)" \
    generate --model "$dir/model" --prompt hi
  rm "$dir/model/$f"
  ln -s "$tiny/$f" "$dir/model/$f"
done
run generate --model "$dir/model" --prompt hi -n 2
check "the repaired model directory works again" [ "$rc" -eq 0 ]

# A DuoAttention pattern whose gate file is a FIFO.
mkdir "$dir/pattern"
mkfifo "$dir/pattern/full_attention_heads.tsv"
echo '{"sink_size": 4, "recent_size": 64}' >"$dir/pattern/config.json"
expect_error "pattern file a FIFO" 1 "full_attention_heads.tsv: not a regular file (a FIFO)" \
  generate --prompt hi --press "duo:0.5,pattern=$dir/pattern"
# ... and one whose config.json is a FIFO: named as such, not "missing".
mkdir "$dir/pattern2"
cp models/pikv-ref-14m/duo/full_attention_heads.tsv "$dir/pattern2/"
mkfifo "$dir/pattern2/config.json"
expect_error "pattern config a FIFO" 1 "config.json: not a regular file (a FIFO)" \
  generate --prompt hi --press "duo:0.5,pattern=$dir/pattern2"

# ---- weights and tokenizers that do not belong together -----------------------
# The tiny model's vocabulary plus one token with id 60,000: the model has 50,257 rows.
mkdir "$dir/bigvocab"
for f in config.json model.safetensors merges.txt; do ln -s "$tiny/$f" "$dir/bigvocab/$f"; done
sed 's/}[[:space:]]*$/, "zz-extra": 60000}/' "$tiny/vocab.json" >"$dir/bigvocab/vocab.json"
expect_error "tokenizer larger than the model" 1 "ids up to 60000 but the model's vocab_size is 50257" \
  generate --model "$dir/bigvocab" --prompt hi

# ---- outputs ------------------------------------------------------------------
cmp_quick="--model $tiny --context-tokens 128 --reps 1 --tasks 1 -n 2 -t 1 --methods knorm:0.5"
# A destination that cannot be written fails before the experiment (one line: no progress lines).
expect_error "compare --out in a missing directory" 1 "--out: /nonexistent/x: cannot create the directory" \
  compare --out /nonexistent/x
expect_error "compare --csv in a missing directory" 1 "--csv: /nonexistent/x.csv" compare --csv /nonexistent/x.csv
echo old >"$dir/old.csv"
ln -s "$dir/old.csv" "$dir/link.csv"
expect_error "compare --csv onto a symlink" 1 "is a symbolic link" compare --csv "$dir/link.csv"
check "the symlink is still a symlink" [ -L "$dir/link.csv" ]
check "and its file unchanged" [ "$(cat "$dir/old.csv")" = old ]
# A FIFO is written through, not replaced by a regular file.
mkfifo "$dir/csv.fifo"
timeout 120 cat "$dir/csv.fifo" >"$dir/fifo.got" &
reader=$!
# shellcheck disable=SC2086
run compare $cmp_quick --csv "$dir/csv.fifo"
wait "$reader"
check "compare --csv FIFO exits 0 ($(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
check "the CSV came through the FIFO" grep -q '^sweep,x,name,' "$dir/fifo.got"
check "the FIFO is still a FIFO" [ -p "$dir/csv.fifo" ]
# A report set whose compare.csv cannot be replaced (a directory): the old compare.json stays, nothing new lands.
mkdir -p "$dir/set/compare.csv"
echo '{"old": true}' >"$dir/set/compare.json"
# shellcheck disable=SC2086
run compare $cmp_quick --out "$dir/set"
check "a set that cannot be replaced fails (exit $rc)" [ "$rc" -eq 1 ]
check "its error names compare.csv" grep -q 'compare.csv' "$dir/err"
check "the old compare.json is untouched" [ "$(cat "$dir/set/compare.json")" = '{"old": true}' ]
check "no staging directory or temporary left" [ "$(ls -A "$dir/set")" = "$(printf 'compare.csv\ncompare.json')" ]
rmdir "$dir/set/compare.csv"
# shellcheck disable=SC2086
run compare $cmp_quick --out "$dir/set"
check "then the set is written (exit $rc)" [ "$rc" -eq 0 ] && grep -q '"methods"' "$dir/set/compare.json"
check "and nothing else is left there" [ "$(ls -A "$dir/set")" = "$(printf 'compare.csv\ncompare.json')" ]

# A full standard output is a failure of every command that prints results.
echo '{"weight": [[1, 2]], "num_replicas": 2, "num_groups": 1, "num_nodes": 1, "num_gpus": 1}' >"$dir/loads.json"
full_stdout() {
  name=$1
  shift
  echo hi | timeout 120 "$PIKV" "$@" >/dev/full 2>"$dir/err"
  rc=$?
  if [ "$rc" -eq 1 ] && [ "$(grep -c 'No space left on device' "$dir/err")" -eq 1 ]; then ok
  else not_ok "$name >/dev/full: exit $rc, stderr: $(cat "$dir/err")"; fi
}
full_stdout "generate" generate --model "$tiny" --prompt hi -n 2 -t 1
full_stdout "tokenize" tokenize
full_stdout "inspect" inspect
full_stdout "bench" bench --model "$tiny" -p 8 -n 2 -r 1 -t 1
full_stdout "eplb" eplb --input "$dir/loads.json"
# shellcheck disable=SC2086
full_stdout "compare" compare $cmp_quick
full_stdout "eval" eval --model "$tiny" --tasks 1 --min-tokens 64 --max-tokens 100 -t 1
full_stdout "--help" --help
full_stdout "generate --help" generate --help

# ---- the runtime's settings ---------------------------------------------------
# OpenMP threads spin only briefly (a spin count of 1000) unless the user asked otherwise.
OMP_DISPLAY_ENV=verbose "$PIKV" --help >/dev/null 2>"$dir/err"
check "a short OpenMP spin by default" grep -q "GOMP_SPINCOUNT = '1000'" "$dir/err"
OMP_WAIT_POLICY=active OMP_DISPLAY_ENV=verbose "$PIKV" --help >/dev/null 2>"$dir/err"
check "the user's OMP_WAIT_POLICY wins" grep -q "OMP_WAIT_POLICY = 'ACTIVE'" "$dir/err"
# Under an address-space limit OpenBLAS used to hang before main: now a message, or fewer threads.
# (Not with AddressSanitizer, which cannot start under such a limit at all.)
if ldd "$PIKV" 2>/dev/null | grep -q libasan; then
  echo "cli_hostile: the ulimit -v cases are skipped for a sanitized binary" >&2
else
  (ulimit -v 200000 && timeout 60 "$PIKV" --help >/dev/null 2>"$dir/err")
  rc=$?
  check "ulimit -v 200 MB: exit 1 (got $rc)" [ "$rc" -eq 1 ]
  check "ulimit -v 200 MB: pikv's own message" grep -q "ulimit -v allows 195 MiB of address space, but 1 thread needs" "$dir/err"
  (ulimit -v 600000 && OMP_NUM_THREADS=8 timeout 60 "$PIKV" --help >/dev/null 2>"$dir/err")
  rc=$?
  check "ulimit -v 600 MB with 8 threads asked: exit 1 (got $rc)" [ "$rc" -eq 1 ] && grep -q "lower OMP_NUM_THREADS" "$dir/err"
  (ulimit -v 600000 && timeout 120 "$PIKV" generate --prompt hi -n 2 -t 0 >"$dir/out" 2>"$dir/err")
  rc=$?
  check "ulimit -v 600 MB: generate runs on the threads that fit (exit $rc)" [ "$rc" -eq 0 ] && [ -s "$dir/out" ]

fi

finish cli_hostile
