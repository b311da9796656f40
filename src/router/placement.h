/* Placing decode attention work on parallel workers.
 *
 * After compression, heads hold very different numbers of entries (a Duo
 * retrieval head 2,048, a streaming head 320), so splitting heads evenly by
 * count leaves some workers with far more work than others. The EPLB policy
 * treats each head's cache as an expert whose load is its entries (one decode
 * query each), lets DeepSeek's EPLB replicate the heaviest ones (a replica
 * takes an equal slice of the head's entries) and pack the replicas onto the
 * workers, the same number per worker. The result is a list of work items per
 * worker; it does not matter whether a worker is a thread, a process or a GPU.
 * Partial softmaxes over slices are merged exactly (engine/attention_placed.c). */
#ifndef PIKV_ROUTER_PLACEMENT_H
#define PIKV_ROUTER_PLACEMENT_H

typedef enum { PK_PLACE_EQUAL_COUNT, PK_PLACE_EPLB } pk_place_policy;

/* A contiguous slice of one head's entries. */
typedef struct {
    int head, start, count;
} pk_work_item;

typedef struct {
    int workers, n_items;
    pk_work_item *items;  /* grouped by worker: worker w owns items[first[w] .. first[w+1]) */
    int *first;           /* [workers + 1] */
    long *load;           /* [workers]: entries to read */
    int cap_items;
} pk_placement;

/* Place the heads of one layer (head_len[h] entries each) on `workers`. A
 * "head" is any cache read by one query: the heads of a batch's sequences go
 * in together as one list (router/shard_plan.h). */
int pk_place_heads(const int *head_len, int n_head, int workers, pk_place_policy policy, pk_placement *out);
void pk_placement_free(pk_placement *p);
/* max / mean of the workers' loads (1 = perfect balance). */
double pk_placement_imbalance(const pk_placement *p);

#endif
