/* What a decode step would cost with a batch's KV shards placed on GPUs: a
 * model from stated bandwidths, not a measurement.
 *
 * Every GPU holds all the weights (replicated) and, per layer, the slices the
 * shard plan gives it (router/shard_plan.h). A step reads the weights once on
 * every GPU; then, layer by layer, each GPU reads its KV entries and computes
 * one partial softmax state per shard it holds (2 + head_dim float32s: max,
 * sum, weighted values), and an all-gather brings every state to every GPU,
 * where the shards' states merge exactly and the rest of the layer runs for
 * the whole batch. Each layer waits for its busiest GPU and for its
 * all-gather, which are not overlapped. The all-gather costs a fixed time plus
 * the bytes the GPU receiving most takes in, over NVLink when all GPUs share a
 * node and over InfiniBand at one link per GPU when they span nodes (the way
 * nccl-tests' bus bandwidth counts a collective). The rest of the step (the
 * products, layer norms and their launches) is not modeled but given: a
 * small model's decode step is bound by launches and latency there, not by
 * bytes (measured on one GPU: docs/cuda.md), and every GPU runs it for the
 * whole batch, so placing shards divides none of it.
 *
 * For comparison, the plain alternative: whole sequences on GPUs (data
 * parallelism), each GPU decoding its own sequences alone with no exchange,
 * its sequences packed by EPLB's balanced packing of their KV entries. Its
 * rest of the step is taken to cost what it costs for the whole batch (at
 * launch-bound batch sizes, fewer rows are not faster), which favours shards. */
#ifndef PIKV_BENCH_GPU_COST_H
#define PIKV_BENCH_GPU_COST_H

#include "router/shard_plan.h"

#include <stddef.h>

typedef struct {
    double hbm_gbs;      /* memory bandwidth of one GPU, GB/s (10^9 bytes) */
    double nvlink_gbs;   /* NVLink, per GPU and direction, within a node */
    double ib_gbs;       /* InfiniBand, per GPU and direction, across nodes */
    double nvlink_us;    /* fixed cost of one all-gather within a node, microseconds */
    double ib_us;        /* ... of one all-gather that spans nodes */
    int gpus_per_node;
    double rest_us;      /* per step on every GPU: all but reading weights and KV and the exchange */
} pk_gpu_links;

typedef struct {
    double kv_bytes_max, kv_bytes_mean;  /* KV bytes per GPU, all layers */
    double exchange_bytes;  /* bytes per step into a GPU: each layer's largest intake, summed */
    double weights_us;      /* reading the weights once */
    double kv_read_us;      /* per layer, the busiest GPU's KV read; summed */
    double exchange_us;     /* the layers' all-gathers */
    double rest_us;         /* the rest of the step, as given (pk_gpu_links.rest_us) */
    double step_us;         /* weights_us + kv_read_us + exchange_us + rest_us */
} pk_gpu_cost;

/* Bytes of one partial softmax state of a head of head_dim values. */
size_t pk_partial_state_bytes(int head_dim);

/* Model a step for plan p: entry_bytes per KV entry (keys, values and
 * position), weight_bytes of weights on every GPU. Fails on a bandwidth that
 * is not positive, a fixed cost below zero or fewer than one GPU a node. */
int pk_gpu_cost_model(const pk_shard_plan *p, size_t entry_bytes, int head_dim, size_t weight_bytes,
                      const pk_gpu_links *links, pk_gpu_cost *out);

/* One policy's placement of every layer's shards and its modeled step:
 * len[l * n_shard + s] entries in shard s of layer l, on `gpus` GPUs. */
typedef struct {
    pk_gpu_cost cost;
    double imbalance;  /* pk_shard_plan_imbalance */
    long slices, split;
} pk_gpu_result;

int pk_gpu_simulate(const int *len, int n_layer, int n_shard, int gpus, pk_place_policy policy, size_t entry_bytes,
                    int head_dim, size_t weight_bytes, const pk_gpu_links *links, pk_gpu_result *out);

/* The same batch as whole sequences on `gpus` GPUs: len[l * n_head * batch +
 * h * batch + b] entries in head h of sequence b in layer l (the order of
 * pk_batch_shards). Each sequence's load is its entries over all layers; the
 * imbalance is the busiest GPU's entries over the mean, slices the sequences,
 * split 0, and no exchange. */
int pk_gpu_by_sequence(const int *len, int n_layer, int n_head, int batch, int gpus, size_t entry_bytes,
                       size_t weight_bytes, const pk_gpu_links *links, pk_gpu_result *out);

#endif
