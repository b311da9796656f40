#!/bin/sh
# --device on the commands that have it: an unknown device is a usage error,
# cuda in this build (made without the CUDA engine) or on a command without a
# GPU path is one line saying why, and cpu is the default. Run from the
# repository root with $PIKV set; ends with "cli_device: N passed, M failed".
. tests/lib/cli.sh

for cmd in bench eval compare; do
  expect_error "$cmd --device tpu" 2 "pikv $cmd: --device: unknown device 'tpu' (known: cpu, cuda)" $cmd --device tpu
done
expect_error "generate --device tpu" 2 "--device: unknown device 'tpu'" generate --device tpu --prompt hi

if "$PIKV" generate --device cuda --prompt hi -n 1 >/dev/null 2>"$dir/probe"; then
  echo "cli_device: this pikv has a GPU path; tests/cuda/cli_cuda.sh covers it"
else
  expect_error "generate --device cuda without the engine" 1 "--device cuda: this pikv was built without the CUDA engine" \
    generate --device cuda --prompt hi
  expect_error "bench --device cuda without the engine" 1 "--device cuda: this pikv was built without the CUDA engine" \
    bench --device cuda
fi
for cmd in eval compare; do
  expect_error "$cmd --device cuda" 2 "pikv $cmd: --device cuda: its presses run on the CPU only so far" $cmd --device cuda
done
expect_error "bench --batch on the CPU" 2 "pikv bench: --batch: only with --device cuda" bench --batch 4
expect_error "bench --no-graphs on the CPU" 2 "pikv bench: --no-graphs: only with --device cuda" bench --no-graphs
expect_error "generate --device cuda with a press" 2 "--device cuda: generates greedily from a prompt, without --press" \
  generate --device cuda --context-file README.md --press knorm:0.5

prompt="The old lighthouse keeper climbed the stairs every evening to"
run generate --weights f32 --prompt "$prompt" -n 12 --print-ids
cp "$dir/out" "$dir/default"
run generate --device cpu --weights f32 --prompt "$prompt" -n 12 --print-ids
check "generate --device cpu: the default's ids" cmp -s "$dir/out" "$dir/default"
finish cli_device
