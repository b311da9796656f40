/* Placing a batch's KV shards on GPUs, layer by layer, and counting what each
 * GPU then holds and produces.
 *
 * A shard is the cache of one (sequence, head) in one layer. Every layer's
 * shards are placed on their own by pk_place_heads (router/placement.h), by
 * DeepSeek's EPLB or an equal count: layers run one after another, each with
 * its own exchange, so it is each layer that must be balanced. A shard EPLB
 * replicates is cut into slices that may land on several GPUs. Each GPU then
 * produces one partial softmax state (max, sum, weighted values) per shard it
 * holds any slice of: slices of one shard on the same GPU merge there before
 * anything leaves it. */
#ifndef PIKV_ROUTER_SHARD_PLAN_H
#define PIKV_ROUTER_SHARD_PLAN_H

#include "router/placement.h"

typedef struct {
    int n_layer, gpus;
    long *entries;   /* [n_layer][gpus]: KV entries each GPU holds, and reads per decode step */
    long *partials;  /* [n_layer][gpus]: partial states each GPU produces per decode step */
    long slices;     /* work items over all layers (a shard not cut is one) */
    long split;      /* (layer, shard) pairs whose slices lie on more than one GPU */
} pk_shard_plan;

/* Place len[l * n_shard + s] (the entries of shard s in layer l) on `gpus`
 * GPUs with `policy`, every layer. Release the plan with pk_shard_plan_free. */
int pk_shard_plan_make(const int *len, int n_layer, int n_shard, int gpus, pk_place_policy policy,
                       pk_shard_plan *out);
void pk_shard_plan_free(pk_shard_plan *p);

/* Entries GPU g holds over all layers. */
long pk_shard_plan_gpu_entries(const pk_shard_plan *p, int g);
/* The sum over layers of the busiest GPU's entries over the sum of the mean
 * GPU's: how much longer a step's attention takes than with perfect balance,
 * since each layer waits for its busiest GPU (1 = even). */
double pk_shard_plan_imbalance(const pk_shard_plan *p);

#endif
