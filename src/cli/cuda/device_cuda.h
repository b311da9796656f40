/* `generate` and `bench` on the CUDA engine (src/backend/cuda), compiled into
 * build-cuda/pikv only. The host loads the checkpoint in float32 and the
 * engine keeps weights and KV blocks on the GPU in the --weights type: f32,
 * f16 or bf16, with bf16 for "stored" or no flag (16-bit weights halve what a
 * decode step reads, and bf16 keeps float32's range). */
#ifndef PIKV_CLI_CUDA_DEVICE_CUDA_H
#define PIKV_CLI_CUDA_DEVICE_CUDA_H

#include "cli/args.h"
#include "pikv.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *weights;         /* --weights as given, or NULL */
    int n_prompt, n_gen, reps;
    int batch;                   /* sequences decoded together */
    int graphs;                  /* replay the decode step from a CUDA graph */
    pikv_press *press;           /* compresses each prompt (NULL: none) */
    const char *press_spec;      /* its spec, for the report */
    size_t kv_budget;            /* capacity mode: admit as many sequences as fit these KV bytes (0: off) */
    int gpus;                    /* decode on this many GPUs, shards placed by EPLB (0: one GPU, no group) */
    int same_gpu;                /* put every rank of the group on GPU 0 (a check of the merge, not a speed) */
} cli_cuda_bench_options;

/* Prefill n_prompt random tokens into each of `batch` sequences (compressed
 * by the press), then decode n_gen tokens for all of them together, reps
 * times after one warm-up; prints medians with min..max, the device time of a
 * replayed step, launches per step, the block pool's bytes and the bandwidth
 * floor of a step. With kv_budget, the batch is as many sequences as the
 * press lets fit in that many bytes of KV blocks (pk_cuda_plan_capacity). */
int cli_cuda_bench(const cli_command *cmd, const pikv_model *m, const char *dir, const cli_cuda_bench_options *o);

/* With o->gpus: the same prompts and press on a group of GPUs
 * (engine/cuda/group_cuda.h): per-GPU KV entries and bytes, the load
 * max/mean of EPLB's placement against an equal count of heads per GPU, and
 * the decode speed, steps launched (a replayed graph cannot hold the host's
 * part of an exchange). */

#endif
