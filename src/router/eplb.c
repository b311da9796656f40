/* DeepSeek's Expert Parallelism Load Balancer (EPLB): replicate heavy experts,
 * then pack the replicas onto devices so that every device carries about the same
 * load. The hierarchical policy first packs expert groups onto nodes, so that the
 * replicas of a group stay on one node; the global policy is the same steps with
 * one group and one node. */
#include "router/eplb.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An item to be packed, sorted by weight. */
typedef struct ranked_item {
    float weight;
    int index;
} ranked_item;

/* Work space for packing up to a known number of items into a known number of
 * packs, so that each layer of a rebalance does not allocate again. */
typedef struct packing_scratch {
    ranked_item *order;   /* [items] */
    float *pack_weight;   /* [packs] */
    int *pack_count;      /* [packs] */
} packing_scratch;

/* The sizes of one rebalance, and the quotients the placement is made of. */
typedef struct eplb_shape {
    int num_experts, num_replicas, num_groups, num_nodes, num_gpus;
    int group_size;         /* experts per group */
    int groups_per_node;
    int experts_per_node;
    int replicas_per_node;
    int gpus_per_node;
    int replicas_per_gpu;
} eplb_shape;

/* Everything one layer's placement needs besides its outputs. */
typedef struct layer_scratch {
    float *group_load;     /* [groups]: summed load of each group */
    int *group_node;       /* [groups]: the node each group is packed onto */
    int *group_rank;       /* [groups]: its rank among that node's groups */
    int *mlog2log;         /* [experts]: node-ordered expert id -> original expert */
    float *node_load;      /* [experts_per_node]: loads of one node's experts */
    int *mlog_count;       /* [experts_per_node]: their replica counts */
    int *phy2mlog;         /* [replicas_per_node]: the expert of each replica */
    int *phy_rank;         /* [replicas_per_node]: the replica's creation rank */
    float *phy_load;       /* [replicas_per_node]: load / count of its expert */
    int *phy_gpu;          /* [replicas_per_node]: the node-local device it lands on */
    int *phy_rank_on_gpu;  /* [replicas_per_node]: its position on that device */
    packing_scratch packing;
} layer_scratch;

/* Why a load is unusable ("not finite", "negative"), or NULL when it is fine. */
static const char *load_problem(float load)
{
    if (!isfinite(load)) return "not finite";
    if (load < 0) return "negative";
    return NULL;
}

/* Order for qsort: heavier first, and the lower index first among equals, so the
 * order is total and the placement deterministic. */
static int by_descending_weight(const void *a, const void *b)
{
    const ranked_item *x = a, *y = b;
    if (x->weight != y->weight) return x->weight > y->weight ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* The replication step on validated arguments: one replica per item, then each
 * extra replica to the item with the largest load / count in float32, the first
 * such item winning ties. */
static void replicate_items(const float *load, int num_logical, int num_physical,
                            int *phy2log, int *replica_rank, int *logcnt)
{
    for (int i = 0; i < num_logical; i++) {
        phy2log[i] = i;
        replica_rank[i] = 0;
        logcnt[i] = 1;
    }
    for (int slot = num_logical; slot < num_physical; slot++) {
        int best = 0;
        float best_share = load[0] / (float)logcnt[0];
        for (int e = 1; e < num_logical; e++) {
            float share = load[e] / (float)logcnt[e];
            if (share > best_share) {
                best = e;
                best_share = share;
            }
        }
        phy2log[slot] = best;
        replica_rank[slot] = logcnt[best]++;
    }
}

/* The packing step on validated arguments (num_items a multiple of num_packs):
 * greedy, heaviest item first, into the lightest pack that still has room. The
 * pack sums are float32, as the reference keeps them. */
static void pack_items(const float *weight, int num_items, int num_packs,
                       const packing_scratch *scratch, int *pack_index, int *rank_in_pack)
{
    int per_pack = num_items / num_packs;
    if (per_pack == 1) {
        for (int i = 0; i < num_items; i++) {
            pack_index[i] = i;
            rank_in_pack[i] = 0;
        }
        return;
    }
    ranked_item *order = scratch->order;
    for (int i = 0; i < num_items; i++) order[i] = (ranked_item){weight[i], i};
    qsort(order, (size_t)num_items, sizeof *order, by_descending_weight);
    for (int p = 0; p < num_packs; p++) {
        scratch->pack_weight[p] = 0.0f;
        scratch->pack_count[p] = 0;
    }
    for (int k = 0; k < num_items; k++) {
        int best = -1;
        for (int p = 0; p < num_packs; p++) {
            if (scratch->pack_count[p] == per_pack) continue;
            if (best < 0 || scratch->pack_weight[p] < scratch->pack_weight[best]) best = p;
        }
        int item = order[k].index;
        pack_index[item] = best;
        rank_in_pack[item] = scratch->pack_count[best]++;
        scratch->pack_weight[best] += order[k].weight;
    }
}

/* Release a packing scratch and empty it (NULL members are fine). */
static void packing_scratch_free(packing_scratch *s)
{
    pk_free(s->order);
    pk_free(s->pack_weight);
    pk_free(s->pack_count);
    *s = (packing_scratch){0};
}

/* Allocate a packing scratch for up to max_items items and max_packs packs. */
static int packing_scratch_alloc(packing_scratch *s, int max_items, int max_packs)
{
    s->order = pk_malloc_array((size_t)max_items, sizeof *s->order, "EPLB packing order");
    s->pack_weight = pk_malloc_array((size_t)max_packs, sizeof *s->pack_weight,
                                     "EPLB pack weights");
    s->pack_count = pk_malloc_array((size_t)max_packs, sizeof *s->pack_count,
                                    "EPLB pack counts");
    if (s->order && s->pack_weight && s->pack_count) return 0;
    packing_scratch_free(s);
    return -1;
}

/* Public replication step: check the arguments, then replicate_items. */
int pk_eplb_replicate(const float *load, int num_logical, int num_physical,
                      int *phy2log, int *replica_rank, int *logcnt)
{
    if (!load || !phy2log || !replica_rank || !logcnt)
        return pk_fail("replicate: NULL array argument");
    if (num_logical <= 0)
        return pk_fail("replicate: number of items must be positive, got %d", num_logical);
    if (num_physical < num_logical)
        return pk_fail("replicate: %d replicas cannot hold %d items (one replica each)",
                       num_physical, num_logical);
    for (int i = 0; i < num_logical; i++) {
        const char *why = load_problem(load[i]);
        if (why) return pk_fail("replicate: load[%d] = %g is %s", i, load[i], why);
    }
    replicate_items(load, num_logical, num_physical, phy2log, replica_rank, logcnt);
    return 0;
}

/* Public packing step: check the arguments, then pack_items with its own scratch. */
int pk_eplb_balanced_packing(const float *weight, int num_items, int num_packs,
                             int *pack_index, int *rank_in_pack)
{
    if (!weight || !pack_index || !rank_in_pack)
        return pk_fail("balanced packing: NULL array argument");
    if (num_items <= 0 || num_packs <= 0)
        return pk_fail("balanced packing: items (%d) and packs (%d) must be positive",
                       num_items, num_packs);
    if (num_items % num_packs != 0)
        return pk_fail("balanced packing: %d items do not divide evenly into %d packs",
                       num_items, num_packs);
    for (int i = 0; i < num_items; i++) {
        const char *why = load_problem(weight[i]);
        if (why) return pk_fail("balanced packing: weight[%d] = %g is %s", i, weight[i], why);
    }
    packing_scratch scratch;
    if (packing_scratch_alloc(&scratch, num_items, num_packs) != 0) return -1;
    pack_items(weight, num_items, num_packs, &scratch, pack_index, rank_in_pack);
    packing_scratch_free(&scratch);
    return 0;
}

/* Check the counts of a rebalance and work out its shape: the global policy is
 * described as one group on one node. */
static int make_shape(int num_experts, int num_replicas, int num_groups, int num_nodes,
                      int num_gpus, eplb_shape *shape)
{
    if (num_experts <= 0) return pk_fail("num_experts must be positive, got %d", num_experts);
    if (num_replicas <= 0) return pk_fail("num_replicas must be positive, got %d", num_replicas);
    if (num_replicas > (1 << 20) || num_experts > (1 << 20))
        return pk_fail("num_replicas (%d) and num_experts (%d) must be at most %d", num_replicas, num_experts, 1 << 20);
    if (num_groups <= 0) return pk_fail("num_groups must be positive, got %d", num_groups);
    if (num_nodes <= 0) return pk_fail("num_nodes must be positive, got %d", num_nodes);
    if (num_gpus <= 0) return pk_fail("num_gpus must be positive, got %d", num_gpus);
    if (num_experts % num_groups != 0)
        return pk_fail("num_experts (%d) must be a multiple of num_groups (%d)",
                       num_experts, num_groups);
    if (num_replicas < num_experts)
        return pk_fail("num_replicas (%d) must be at least num_experts (%d)",
                       num_replicas, num_experts);
    if (num_replicas % num_gpus != 0)
        return pk_fail("num_replicas (%d) must be a multiple of num_gpus (%d)",
                       num_replicas, num_gpus);
    int hierarchical = num_groups % num_nodes == 0;
    if (hierarchical && num_gpus % num_nodes != 0)
        return pk_fail("num_gpus (%d) must be a multiple of num_nodes (%d) for the "
                       "hierarchical policy (num_groups %% num_nodes == 0)",
                       num_gpus, num_nodes);
    if (!hierarchical) num_groups = num_nodes = 1;
    *shape = (eplb_shape){
        .num_experts = num_experts,
        .num_replicas = num_replicas,
        .num_groups = num_groups,
        .num_nodes = num_nodes,
        .num_gpus = num_gpus,
        .group_size = num_experts / num_groups,
        .groups_per_node = num_groups / num_nodes,
        .experts_per_node = num_experts / num_nodes,
        .replicas_per_node = num_replicas / num_nodes,
        .gpus_per_node = num_gpus / num_nodes,
        .replicas_per_gpu = num_replicas / num_gpus,
    };
    return 0;
}

/* Release a layer scratch and empty it (NULL members are fine). */
static void layer_scratch_free(layer_scratch *s)
{
    pk_free(s->group_load);
    pk_free(s->group_node);
    pk_free(s->group_rank);
    pk_free(s->mlog2log);
    pk_free(s->node_load);
    pk_free(s->mlog_count);
    pk_free(s->phy2mlog);
    pk_free(s->phy_rank);
    pk_free(s->phy_load);
    pk_free(s->phy_gpu);
    pk_free(s->phy_rank_on_gpu);
    packing_scratch_free(&s->packing);
    memset(s, 0, sizeof *s);
}

/* Allocate the scratch for placing one layer of the given shape. */
static int layer_scratch_alloc(layer_scratch *s, const eplb_shape *shape)
{
    size_t groups = (size_t)shape->num_groups;
    size_t experts = (size_t)shape->num_experts;
    size_t node_experts = (size_t)shape->experts_per_node;
    size_t node_replicas = (size_t)shape->replicas_per_node;
    memset(s, 0, sizeof *s);
    s->group_load = pk_malloc_array(groups, sizeof(float), "EPLB group loads");
    s->group_node = pk_malloc_array(groups, sizeof(int), "EPLB group nodes");
    s->group_rank = pk_malloc_array(groups, sizeof(int), "EPLB group ranks");
    s->mlog2log = pk_malloc_array(experts, sizeof(int), "EPLB expert order");
    s->node_load = pk_malloc_array(node_experts, sizeof(float), "EPLB node loads");
    s->mlog_count = pk_malloc_array(node_experts, sizeof(int), "EPLB node replica counts");
    s->phy2mlog = pk_malloc_array(node_replicas, sizeof(int), "EPLB replica experts");
    s->phy_rank = pk_malloc_array(node_replicas, sizeof(int), "EPLB replica ranks");
    s->phy_load = pk_malloc_array(node_replicas, sizeof(float), "EPLB replica loads");
    s->phy_gpu = pk_malloc_array(node_replicas, sizeof(int), "EPLB replica devices");
    s->phy_rank_on_gpu = pk_malloc_array(node_replicas, sizeof(int),
                                         "EPLB replica device ranks");
    int max_items = shape->num_groups > shape->replicas_per_node ? shape->num_groups
                                                                 : shape->replicas_per_node;
    int max_packs = shape->num_nodes > shape->gpus_per_node ? shape->num_nodes
                                                            : shape->gpus_per_node;
    int packing_ok = packing_scratch_alloc(&s->packing, max_items, max_packs) == 0;
    if (packing_ok && s->group_load && s->group_node && s->group_rank && s->mlog2log &&
        s->node_load && s->mlog_count && s->phy2mlog && s->phy_rank && s->phy_load &&
        s->phy_gpu && s->phy_rank_on_gpu)
        return 0;
    layer_scratch_free(s);
    return -1;
}

/* Place one layer (load[num_experts]): pack groups onto nodes and renumber the
 * experts node by node (step 1 of DeepSeek's hierarchical policy), replicate each node's experts
 * into its slots (2), pack those replicas onto the node's devices and map them
 * back to slots and original experts (3). Writes phy2log[num_replicas],
 * slot_rank[num_replicas] (each slot's replica rank) and logcnt[num_experts]. */
static void place_layer(const float *load, const eplb_shape *shape, layer_scratch *s,
                        int *phy2log, int *slot_rank, int *logcnt)
{
    int group_size = shape->group_size;
    for (int g = 0; g < shape->num_groups; g++) {
        float sum = 0.0f;
        for (int j = 0; j < group_size; j++) sum += load[g * group_size + j];
        s->group_load[g] = sum;
    }
    pack_items(s->group_load, shape->num_groups, shape->num_nodes, &s->packing,
               s->group_node, s->group_rank);
    for (int g = 0; g < shape->num_groups; g++) {
        int first_id = (s->group_node[g] * shape->groups_per_node + s->group_rank[g]) *
                       group_size;
        for (int j = 0; j < group_size; j++) s->mlog2log[first_id + j] = g * group_size + j;
    }

    for (int node = 0; node < shape->num_nodes; node++) {
        const int *node_experts = s->mlog2log + node * shape->experts_per_node;
        for (int i = 0; i < shape->experts_per_node; i++) s->node_load[i] = load[node_experts[i]];
        replicate_items(s->node_load, shape->experts_per_node, shape->replicas_per_node,
                        s->phy2mlog, s->phy_rank, s->mlog_count);
        for (int p = 0; p < shape->replicas_per_node; p++) {
            int expert = s->phy2mlog[p];
            s->phy_load[p] = s->node_load[expert] / (float)s->mlog_count[expert];
        }
        pack_items(s->phy_load, shape->replicas_per_node, shape->gpus_per_node, &s->packing,
                   s->phy_gpu, s->phy_rank_on_gpu);
        for (int p = 0; p < shape->replicas_per_node; p++) {
            int slot = node * shape->replicas_per_node +
                       s->phy_gpu[p] * shape->replicas_per_gpu + s->phy_rank_on_gpu[p];
            phy2log[slot] = node_experts[s->phy2mlog[p]];
            slot_rank[slot] = s->phy_rank[p];
        }
        for (int i = 0; i < shape->experts_per_node; i++)
            logcnt[node_experts[i]] = s->mlog_count[i];
    }
}

/* Release a plan's arrays and zero it, so that freeing twice is harmless. */
void pk_eplb_plan_free(pk_eplb_plan *plan)
{
    if (!plan) return;
    pk_free(plan->phy2log);
    pk_free(plan->logcnt);
    pk_free(plan->log2phy);
    memset(plan, 0, sizeof *plan);
}

/* Build log2phy from each slot's expert and replica rank: M is the largest
 * replica count in any layer, and unused entries stay -1. */
static int fill_log2phy(pk_eplb_plan *plan, const int *slot_rank)
{
    size_t layers = (size_t)plan->num_layers, experts = (size_t)plan->num_experts;
    size_t replicas = (size_t)plan->num_replicas;
    int max_count = 0;
    for (size_t i = 0; i < layers * experts; i++)
        if (plan->logcnt[i] > max_count) max_count = plan->logcnt[i];
    size_t m = (size_t)max_count;
    plan->log2phy = pk_malloc_array(layers * experts, m * sizeof(int), "EPLB log2phy");
    if (!plan->log2phy) return -1;
    plan->max_replicas = max_count;
    for (size_t i = 0; i < layers * experts * m; i++) plan->log2phy[i] = -1;
    for (size_t l = 0; l < layers; l++) {
        for (size_t slot = 0; slot < replicas; slot++) {
            size_t expert = (size_t)plan->phy2log[l * replicas + slot];
            size_t rank = (size_t)slot_rank[l * replicas + slot];
            plan->log2phy[(l * experts + expert) * m + rank] = (int)slot;
        }
    }
    return 0;
}

/* Check everything, then place every layer with one shared scratch; on any
 * failure the plan is left empty. */
int pk_eplb_rebalance(const float *weight, int num_layers, int num_experts,
                      int num_replicas, int num_groups, int num_nodes, int num_gpus,
                      pk_eplb_plan *plan)
{
    if (!plan) return pk_fail("EPLB: NULL plan argument");
    memset(plan, 0, sizeof *plan);
    if (!weight) return pk_fail("EPLB: NULL weight argument");
    if (num_layers <= 0) return pk_fail("num_layers must be positive, got %d", num_layers);
    eplb_shape shape = {0};
    if (make_shape(num_experts, num_replicas, num_groups, num_nodes, num_gpus, &shape) != 0)
        return -1;
    size_t layers = (size_t)num_layers, experts = (size_t)num_experts;
    size_t replicas = (size_t)num_replicas;
    for (size_t l = 0; l < layers; l++) {
        for (size_t e = 0; e < experts; e++) {
            float load = weight[l * experts + e];
            const char *why = load_problem(load);
            if (why) return pk_fail("weight[%zu][%zu] = %g is %s", l, e, load, why);
        }
    }

    plan->num_layers = num_layers;
    plan->num_experts = num_experts;
    plan->num_replicas = num_replicas;
    plan->phy2log = pk_malloc_array(layers, replicas * sizeof(int), "EPLB phy2log");
    plan->logcnt = pk_malloc_array(layers, experts * sizeof(int), "EPLB logcnt");
    int *slot_rank = pk_malloc_array(layers, replicas * sizeof(int), "EPLB slot ranks");
    layer_scratch scratch;
    int scratch_ok = layer_scratch_alloc(&scratch, &shape) == 0;
    if (!plan->phy2log || !plan->logcnt || !slot_rank || !scratch_ok) {
        if (scratch_ok) layer_scratch_free(&scratch);
        pk_free(slot_rank);
        pk_eplb_plan_free(plan);
        return -1;
    }
    for (size_t l = 0; l < layers; l++)
        place_layer(weight + l * experts, &shape, &scratch, plan->phy2log + l * replicas,
                    slot_rank + l * replicas, plan->logcnt + l * experts);
    layer_scratch_free(&scratch);
    int status = fill_log2phy(plan, slot_rank);
    pk_free(slot_rank);
    if (status != 0) pk_eplb_plan_free(plan);
    return status;
}
