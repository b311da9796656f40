#!/bin/sh
# --device on the commands that have it: an unknown device is a usage error,
# cuda in this build (made without the CUDA engine) is one line saying why,
# the GPU-only flags of bench are refused on the CPU, and cpu is the default.
# Run from the
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
  for cmd in bench eval compare; do
    expect_error "$cmd --device cuda without the engine" 1 \
      "pikv $cmd: --device cuda: this pikv was built without the CUDA engine" $cmd --device cuda
  done
fi
expect_error "bench --batch on the CPU" 2 "pikv bench: --batch: only with --device cuda" bench --batch 4
expect_error "bench --no-graphs on the CPU" 2 "pikv bench: --no-graphs: only with --device cuda" bench --no-graphs
expect_error "compare --kv-budget on the CPU" 2 "pikv compare: --kv-budget: only with --device cuda" \
  compare --kv-budget 1GiB
expect_error "bench --kv-budget on the CPU" 2 "pikv bench: --kv-budget: only with --device cuda" bench --kv-budget 1GiB
expect_error "bench --kv-budget that is not a size" 2 \
  "pikv bench: --kv-budget: '2XB' is not a size (say 2GiB, 512MiB or 1500000000)" bench --device cuda --kv-budget 2XB
expect_error "bench --kv-budget with --batch" 2 "pikv bench: --kv-budget chooses the batch: drop --batch" \
  bench --device cuda --kv-budget 1GiB --batch 2
expect_error "bench --gpus on the CPU" 2 "pikv bench: --gpus: only with --device cuda" bench --gpus 2
expect_error "bench --same-gpu without --gpus" 2 "pikv bench: --same-gpu: places the ranks of --gpus N; give --gpus" \
  bench --device cuda --same-gpu
expect_error "bench --gpus with --kv-budget" 2 "pikv bench: --gpus: capacity (--kv-budget) on several GPUs is not built" \
  bench --device cuda --gpus 2 --kv-budget 1GiB
expect_error "bench --gpus 0" 2 "pikv bench: --gpus" bench --device cuda --gpus 0

prompt="The old lighthouse keeper climbed the stairs every evening to"
run generate --weights f32 --prompt "$prompt" -n 12 --print-ids
cp "$dir/out" "$dir/default"
run generate --device cpu --weights f32 --prompt "$prompt" -n 12 --print-ids
check "generate --device cpu: the default's ids" cmp -s "$dir/out" "$dir/default"
finish cli_device
