/* DeepSeek's Expert Parallelism Load Balancer (EPLB), as DeepSeek published it.
 *
 * Given how much work each logical expert does (a load matrix [layers][experts]),
 * EPLB decides how many physical replicas each expert gets and on which slot of
 * which device each replica lives, so that the devices carry loads as even as a
 * greedy placement makes them. Slot p lives on device p / (num_replicas / num_gpus).
 *
 * The two building blocks are public too, because they place anything weighted on
 * anything that works in parallel: `pk_eplb_replicate` splits heavy items into
 * replicas, `pk_eplb_balanced_packing` spreads items over workers (threads,
 * processes or GPUs — the placement does not care which).
 *
 * All functions return 0 on success, or -1 with a one-line message for
 * pikv_last_error(). Loads are float32 and are divided in float32, as in
 * DeepSeek's reference. */
#ifndef PIKV_ROUTER_EPLB_H
#define PIKV_ROUTER_EPLB_H

#include <stddef.h>

/* Where every replica of every expert goes, for each layer of a load matrix. */
typedef struct pk_eplb_plan {
    int num_layers;
    int num_experts;
    int num_replicas;   /* R: physical slots per layer */
    int max_replicas;   /* M: the largest replica count of any expert in any layer */
    int *phy2log;       /* [num_layers][num_replicas]: the expert in each slot */
    int *logcnt;        /* [num_layers][num_experts]: replicas of each expert */
    int *log2phy;       /* [num_layers][num_experts][max_replicas]: slot of replica r
                           of expert e (r in the order replicas were created,
                           0 = the original), -1 past logcnt */
} pk_eplb_plan;

/* Replicate num_logical items into num_physical >= num_logical replicas: one each,
 * then every extra replica goes to the item with the largest load / replica count
 * (the first such item on ties). Writes phy2log[num_physical] (the item of each
 * replica; replica i < num_logical is item i), replica_rank[num_physical] (how many
 * replicas of that item existed before it) and logcnt[num_logical]. */
int pk_eplb_replicate(const float *load, int num_logical, int num_physical,
                      int *phy2log, int *replica_rank, int *logcnt);

/* Pack num_items weighted items into num_packs packs of exactly
 * num_items / num_packs items each: items by descending weight (the lower index
 * first on ties) each go to the non-full pack with the least weight so far (the
 * lower pack on ties). With one item per pack, item i goes to pack i. Writes
 * pack_index[num_items] and rank_in_pack[num_items] (the order in which the
 * item entered its pack). */
int pk_eplb_balanced_packing(const float *weight, int num_items, int num_packs,
                             int *pack_index, int *rank_in_pack);

/* Run EPLB on weight[num_layers][num_experts] (row-major, finite, >= 0). The
 * hierarchical policy is used when num_groups % num_nodes == 0 (groups are
 * packed onto nodes, then experts are replicated and packed onto devices within
 * each node), the global policy otherwise. Requirements: all counts positive,
 * num_experts % num_groups == 0, num_replicas >= num_experts,
 * num_replicas % num_gpus == 0, and for the hierarchical policy
 * num_gpus % num_nodes == 0. On success fills *plan; release it with
 * pk_eplb_plan_free. */
int pk_eplb_rebalance(const float *weight, int num_layers, int num_experts,
                      int num_replicas, int num_groups, int num_nodes, int num_gpus,
                      pk_eplb_plan *plan);

/* Release the arrays of a plan and zero it; a zeroed plan is fine to free. */
void pk_eplb_plan_free(pk_eplb_plan *plan);

/* The `pikv eplb` command's work on JSON text: the input is one object
 * {"weight": [[...], ...], "num_replicas": R, "num_groups": G, "num_nodes": N,
 * "num_gpus": D} or a list of them; the result is, per object,
 * {"phy2log": [[...]], "log2phy": [[[...]]], "logcnt": [[...]]} (a list for a
 * list), as one line of JSON text allocated with pk_malloc (free with pk_free).
 * Returns NULL with a one-line message naming what is wrong. */
char *pk_eplb_json(const char *text, size_t len);

#endif
