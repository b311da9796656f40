/* The six routers of the moe_router press, their budgets, the per-expert
 * selection, and the load statistics with the EPLB placement of the shards
 * (see moe_router.h for what each router does). */
#include "router/moe_router.h"
#include "router/eplb.h"
#include "router/kmeans.h"
#include "util/mem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const router_names[PK_ROUTER_KINDS] = {
    [PK_ROUTER_BASE] = "base",         [PK_ROUTER_TOPK_BALANCED] = "topk_balanced",
    [PK_ROUTER_EPLB] = "eplb",         [PK_ROUTER_ADAPTIVE] = "adaptive",
    [PK_ROUTER_PIKV] = "pikv",         [PK_ROUTER_HIERARCHICAL] = "hierarchical",
};

const char *pk_router_name(pk_router_kind kind) { return router_names[kind]; }

int pk_router_lookup(const char *name)
{
    for (int k = 0; k < PK_ROUTER_KINDS; k++)
        if (strcmp(name, router_names[k]) == 0) return k;
    return -1;
}

/* out[i] = softmax over i < n of PK_ROUTER_TEMPERATURE * cosine[i]. */
static void softmax_of_cosines(const float *cosine, int n, float *out)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++) max = cosine[i] > max ? cosine[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += out[i] = expf(PK_ROUTER_TEMPERATURE * (cosine[i] - max));
    for (int i = 0; i < n; i++) out[i] = (float)(out[i] / sum);
}

/* The router probabilities of one vector from its cosines to the expert
 * centroids (and, for the hierarchical router, to the group centroids):
 * prob[e] = P(group of e) * P(e | its group). */
static void probabilities(const pk_router_config *cfg, const float *cos_expert, const float *cos_group, float *prob)
{
    if (cfg->kind != PK_ROUTER_HIERARCHICAL) {
        softmax_of_cosines(cos_expert, cfg->experts, prob);
        return;
    }
    const int per_group = cfg->experts / cfg->groups;
    float group_prob[PK_ROUTER_MAX_EXPERTS];
    softmax_of_cosines(cos_group, cfg->groups, group_prob);
    for (int g = 0; g < cfg->groups; g++) {
        float *in_group = prob + (size_t)g * (size_t)per_group;
        softmax_of_cosines(cos_expert + (size_t)g * (size_t)per_group, per_group, in_group);
        for (int e = 0; e < per_group; e++) in_group[e] *= group_prob[g];
    }
}

/* The top `count` of experts first..first+span-1 by probability (the lower
 * expert on ties), best first, into out[count]. */
static void top_experts(const float *prob, int first, int span, int count, int *out)
{
    for (int r = 0; r < count; r++) {
        int best = -1;
        for (int e = first; e < first + span; e++) {
            int taken = 0;
            for (int s = 0; s < r; s++) taken |= out[s] == e;
            if (!taken && (best < 0 || prob[e] > prob[best])) best = e;
        }
        out[r] = best;
    }
}

/* A vector's preferred experts with no capacity: its top_k by probability, or
 * for the hierarchical router its top_k inside its most probable group. */
static void preferred_experts(const pk_router_config *cfg, const float *prob, int *out)
{
    if (cfg->kind != PK_ROUTER_HIERARCHICAL) {
        top_experts(prob, 0, cfg->experts, cfg->top_k, out);
        return;
    }
    const int per_group = cfg->experts / cfg->groups;
    int best_group = 0;
    double best_mass = -1;
    for (int g = 0; g < cfg->groups; g++) {
        double mass = 0;
        for (int e = 0; e < per_group; e++) mass += prob[g * per_group + e];
        if (mass > best_mass) {
            best_mass = mass;
            best_group = g;
        }
    }
    top_experts(prob, best_group * per_group, per_group, cfg->top_k, out);
}

int pk_router_capacity(const pk_router_config *cfg, int n)
{
    const int E = cfg->experts, K = cfg->top_k;
    long capacity = n;
    if (cfg->kind == PK_ROUTER_EPLB) capacity = ((long)K * n + E - 1) / E;
    if (cfg->kind == PK_ROUTER_TOPK_BALANCED) capacity = (long)ceil(cfg->capacity * K * n / E);
    return (int)(capacity < n ? capacity : n);
}

/* Whether token t already holds expert e in one of its first `rank` slots. */
static int holds(const pk_routing *r, int t, int rank, int e)
{
    const int *slot = r->slot + (size_t)t * (size_t)r->cfg.top_k;
    for (int s = 0; s < rank; s++)
        if (slot[s] == e) return 1;
    return 0;
}

/* Token t found no expert for slot `rank`: every expert it does not hold is
 * full. Make room by moving another token u, placed at this rank in a full
 * expert B that t does not hold, to the most probable expert with room that u
 * does not hold; t takes u's place in B. Loads stay within capacity, and t
 * keeps no slot only when no such u exists. */
static void repair_stuck_token(pk_routing *r, int t, int rank, int capacity, int *load)
{
    const int K = r->cfg.top_k, E = r->cfg.experts;
    for (int u = 0; u < r->n; u++) {
        const int B = r->slot[(size_t)u * (size_t)K + (size_t)rank];
        if (u == t || B < 0 || holds(r, t, rank, B)) continue;
        int best = -1;
        for (int A = 0; A < E; A++) {
            if (load[A] >= capacity || holds(r, u, rank, A) || A == B) continue;
            if (best < 0 || r->prob[(size_t)u * (size_t)E + (size_t)A] > r->prob[(size_t)u * (size_t)E + (size_t)best])
                best = A;
        }
        if (best < 0) continue;
        r->slot[(size_t)u * (size_t)K + (size_t)rank] = best;
        load[best]++;
        r->slot[(size_t)t * (size_t)K + (size_t)rank] = B;
        return;
    }
}

/* The balanced routers: slot by slot (every token's first choice before any
 * second one), (token, expert) pairs by decreasing probability, each token
 * to the first expert of its pairs that has room and that it does not hold
 * yet -- so a token whose choice is full spills to its next choice. */
static int assign_with_capacity(pk_routing *r, int capacity)
{
    const int n = r->n, E = r->cfg.experts, K = r->cfg.top_k;
    pk_affinity_pair *pairs = pk_malloc_array((size_t)n * (size_t)E, sizeof *pairs, "router assignment");
    pk_affinity_pair *scratch = pk_malloc_array((size_t)n * (size_t)E, sizeof *scratch, "router assignment");
    int *load = pk_calloc((size_t)E, sizeof *load, "router loads");
    if (!pairs || !scratch || !load) {
        pk_free(pairs);
        pk_free(scratch);
        pk_free(load);
        return -1;
    }
    pk_affinity_order(r->prob, n, E, pairs, scratch);
    pk_free(scratch);
    for (size_t i = 0; i < (size_t)n * (size_t)K; i++) r->slot[i] = -1;
    for (int rank = 0; rank < K; rank++) {
        for (size_t p = 0; p < (size_t)n * (size_t)E; p++) {
            const int t = pairs[p].point, e = pairs[p].cluster;
            int *slot = &r->slot[(size_t)t * (size_t)K + (size_t)rank];
            if (*slot >= 0 || load[e] >= capacity || holds(r, t, rank, e)) continue;
            *slot = e;
            load[e]++;
        }
        for (int t = 0; t < n; t++)
            if (r->slot[(size_t)t * (size_t)K + (size_t)rank] < 0) repair_stuck_token(r, t, rank, capacity, load);
    }
    pk_free(pairs);
    pk_free(load);
    return 0;
}

/* The centroids of the hierarchical router: k-means into groups over all
 * keys, then each group's members into experts / groups experts. A group with
 * no members (fewer keys than groups) lends its centroid to its experts. */
static int hierarchical_centroids(pk_routing *r, const pk_router_keys *keys, int *assign)
{
    const int n = r->n, dim = r->dim, G = r->cfg.groups, per_group = r->cfg.experts / G;
    int *members = pk_malloc_array((size_t)n, sizeof *members, "router group members");
    int *member_assign = pk_malloc_array((size_t)n, sizeof *member_assign, "router group members");
    int rc = -1;
    if (!members || !member_assign ||
        keys->kmeans(keys->ctx, NULL, n, G, PK_KMEANS_ITERATIONS, r->group_centroids, assign))
        goto done;
    for (int g = 0; g < G; g++) {
        float *centroids = r->centroids + (size_t)g * (size_t)per_group * (size_t)dim;
        int m = 0;
        for (int t = 0; t < n; t++)
            if (assign[t] == g) members[m++] = t;
        if (m == 0) {
            for (int e = 0; e < per_group; e++)
                memcpy(centroids + (size_t)e * (size_t)dim, r->group_centroids + (size_t)g * (size_t)dim,
                       (size_t)dim * sizeof *centroids);
        } else if (keys->kmeans(keys->ctx, members, m, per_group, PK_KMEANS_ITERATIONS, centroids, member_assign)) {
            goto done;
        }
    }
    rc = 0;
done:
    pk_free(members);
    pk_free(member_assign);
    return rc;
}

int pk_router_route(const pk_router_config *cfg, const pk_router_keys *keys, pk_routing *out)
{
    const int n = keys->n, dim = keys->dim, E = cfg->experts, G = cfg->kind == PK_ROUTER_HIERARCHICAL ? cfg->groups : 0;
    memset(out, 0, sizeof *out);
    out->cfg = *cfg;
    out->n = n;
    out->dim = dim;
    float *cos_expert = pk_malloc_array((size_t)n * (size_t)E, sizeof *cos_expert, "router cosines");
    float *cos_group = G ? pk_malloc_array((size_t)n * (size_t)G, sizeof *cos_group, "router cosines") : NULL;
    int *assign = pk_malloc_array((size_t)n, sizeof *assign, "router clusters");
    out->centroids = pk_malloc_array((size_t)E * (size_t)dim, sizeof *out->centroids, "router centroids");
    out->group_centroids = G ? pk_malloc_array((size_t)G * (size_t)dim, sizeof(float), "router centroids") : NULL;
    out->prob = pk_malloc_array((size_t)n * (size_t)E, sizeof *out->prob, "router probabilities");
    out->slot = pk_malloc_array((size_t)n * (size_t)cfg->top_k, sizeof *out->slot, "router slots");
    int rc = -1;
    if (!cos_expert || (G && (!cos_group || !out->group_centroids)) || !assign || !out->centroids || !out->prob ||
        !out->slot)
        goto done;
    if (G ? hierarchical_centroids(out, keys, assign)
          : keys->kmeans(keys->ctx, NULL, n, E, PK_KMEANS_ITERATIONS, out->centroids, assign))
        goto done;
    if (keys->cosines(keys->ctx, out->centroids, E, cos_expert) ||
        (G && keys->cosines(keys->ctx, out->group_centroids, G, cos_group)))
        goto done;
    for (int t = 0; t < n; t++)
        probabilities(cfg, cos_expert + (size_t)t * (size_t)E, G ? cos_group + (size_t)t * (size_t)G : NULL,
                      out->prob + (size_t)t * (size_t)E);
    if (cfg->kind == PK_ROUTER_TOPK_BALANCED || cfg->kind == PK_ROUTER_EPLB) {
        if (assign_with_capacity(out, pk_router_capacity(cfg, n))) goto done;
    } else {
        for (int t = 0; t < n; t++)
            preferred_experts(cfg, out->prob + (size_t)t * (size_t)E, out->slot + (size_t)t * (size_t)cfg->top_k);
    }
    rc = 0;
done:
    pk_free(cos_expert);
    pk_free(cos_group);
    pk_free(assign);
    if (rc) pk_routing_free(out);
    return rc;
}

void pk_routing_free(pk_routing *r)
{
    pk_free(r->centroids);
    pk_free(r->group_centroids);
    pk_free(r->prob);
    pk_free(r->slot);
    memset(r, 0, sizeof *r);
}

/* Cosines of x to the `count` unit rows of centroids (0 for a zero x). */
static void cosines(const float *x, int dim, const float *centroids, int count, float *out)
{
    double sq = 0;
    for (int d = 0; d < dim; d++) sq += (double)x[d] * x[d];
    const double inv = sq > 0 ? 1.0 / sqrt(sq) : 0.0;
    for (int c = 0; c < count; c++) {
        const float *centroid = centroids + (size_t)c * (size_t)dim;
        double dot = 0;
        for (int d = 0; d < dim; d++) dot += (double)x[d] * centroid[d];
        out[c] = (float)(dot * inv);
    }
}

void pk_router_route_vector(const pk_routing *r, const float *x, int *experts)
{
    float cos_expert[PK_ROUTER_MAX_EXPERTS], cos_group[PK_ROUTER_MAX_EXPERTS], prob[PK_ROUTER_MAX_EXPERTS];
    cosines(x, r->dim, r->centroids, r->cfg.experts, cos_expert);
    if (r->group_centroids) cosines(x, r->dim, r->group_centroids, r->cfg.groups, cos_group);
    probabilities(&r->cfg, cos_expert, cos_group, prob);
    preferred_experts(&r->cfg, prob, experts);
}

void pk_router_budget_weights(const pk_routing *r, const float *attention, const int *hits, double *weight)
{
    const int E = r->cfg.experts, K = r->cfg.top_k;
    for (int e = 0; e < E; e++)
        weight[e] = r->cfg.kind == PK_ROUTER_PIKV ? hits[e] : r->cfg.kind == PK_ROUTER_ADAPTIVE ? 0.0 : 1.0;
    if (r->cfg.kind != PK_ROUTER_ADAPTIVE) return;
    for (int t = 0; t < r->n; t++)
        for (int s = 0; s < K; s++) {
            const int e = r->slot[(size_t)t * (size_t)K + (size_t)s];
            if (e >= 0) weight[e] += attention[t];
        }
}

void pk_router_split_budget(const double *weight, int experts, int total, int *budget)
{
    double sum = 0;
    for (int e = 0; e < experts; e++) sum += weight[e];
    double remainder[PK_ROUTER_MAX_EXPERTS];
    int given = 0;
    for (int e = 0; e < experts; e++) {
        const double share = sum > 0 ? total * (weight[e] / sum) : (double)total / experts;
        budget[e] = (int)floor(share);
        remainder[e] = share - budget[e];
        given += budget[e];
    }
    for (; given < total; given++) {
        int best = 0;
        for (int e = 1; e < experts; e++)
            if (remainder[e] > remainder[best]) best = e;
        budget[best]++;
        remainder[best] = -1;
    }
}

/* The ranking inside an expert: higher score, then higher tiebreak, then the
 * lower token. */
typedef struct {
    const float *score, *tiebreak;
} member_order;

static int by_member_rank(const void *a, const void *b, void *ctx)
{
    const member_order *o = ctx;
    const int s = *(const int *)a, t = *(const int *)b;
    if (o->score[s] != o->score[t]) return o->score[s] > o->score[t] ? -1 : 1;
    if (o->tiebreak[s] != o->tiebreak[t]) return o->tiebreak[s] > o->tiebreak[t] ? -1 : 1;
    return s - t;
}

/* One turn of expert e: keep its best token not kept yet. Returns 1 when it
 * had one. */
static int take_turn(const int *members, const int *end, int *cursor, unsigned char *keep)
{
    while (*cursor < *end && keep[members[*cursor]]) (*cursor)++;
    if (*cursor == *end) return 0;
    keep[members[(*cursor)++]] = 1;
    return 1;
}

int pk_router_select(const pk_routing *r, const float *score, const float *tiebreak, const int *budget,
                     unsigned char *keep, int *kept)
{
    const int n = r->n, E = r->cfg.experts, K = r->cfg.top_k;
    int *members = pk_malloc_array((size_t)n * (size_t)K, sizeof *members, "router selection");
    int *start = pk_calloc((size_t)E + 1, sizeof *start, "router selection");
    int *cursor = pk_malloc_array((size_t)E, sizeof *cursor, "router selection");
    if (!members || !start || !cursor) {
        pk_free(members);
        pk_free(start);
        pk_free(cursor);
        return -1;
    }
    /* Each expert's tokens, contiguous, in its ranking. */
    for (size_t i = 0; i < (size_t)n * (size_t)K; i++)
        if (r->slot[i] >= 0) start[r->slot[i] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    for (int e = 0; e < E; e++) cursor[e] = start[e];
    for (size_t i = 0; i < (size_t)n * (size_t)K; i++)
        if (r->slot[i] >= 0) members[cursor[r->slot[i]]++] = (int)(i / (size_t)K);
    member_order order = {score, tiebreak};
    for (int e = 0; e < E; e++) {
        qsort_r(members + start[e], (size_t)(start[e + 1] - start[e]), sizeof *members, by_member_rank, &order);
        cursor[e] = start[e];
        kept[e] = 0;
    }
    memset(keep, 0, (size_t)n);

    long total = 0, taken = 0;
    for (int e = 0; e < E; e++) total += budget[e];
    /* Turns within the budgets, then turns past them for what is left. */
    for (int past_budget = 0; past_budget < 2; past_budget++) {
        for (int progress = 1; progress && taken < total;) {
            progress = 0;
            for (int e = 0; e < E && taken < total; e++) {
                if (!past_budget && kept[e] >= budget[e]) continue;
                if (take_turn(members, &start[e + 1], &cursor[e], keep)) {
                    kept[e]++;
                    taken++;
                    progress = 1;
                }
            }
        }
    }
    pk_free(members);
    pk_free(start);
    pk_free(cursor);
    return 0;
}

int pk_router_stats_init(pk_router_stats *s, int n_layer, int n_head, int experts, int workers)
{
    memset(s, 0, sizeof *s);
    const size_t cells = (size_t)n_layer * (size_t)n_head * (size_t)experts;
    const int shards = n_head * experts;
    s->n_layer = n_layer;
    s->n_head = n_head;
    s->experts = experts;
    s->workers = workers;
    s->slots = (shards + workers - 1) / workers * workers;
    s->recorded = pk_calloc((size_t)n_layer, 1, "router statistics");
    s->tokens = pk_calloc(cells, sizeof(int), "router statistics");
    s->selected = pk_calloc(cells, sizeof(int), "router statistics");
    s->budget = pk_calloc(cells, sizeof(int), "router statistics");
    s->kept = pk_calloc(cells, sizeof(int), "router statistics");
    s->slot_shard = pk_malloc_array((size_t)n_layer * (size_t)s->slots, sizeof(int), "router placement");
    s->worker_load = pk_calloc((size_t)n_layer * (size_t)workers, sizeof(float), "router placement");
    if (!s->recorded || !s->tokens || !s->selected || !s->budget || !s->kept || !s->slot_shard || !s->worker_load) {
        pk_router_stats_free(s);
        return -1;
    }
    for (size_t i = 0; i < (size_t)n_layer * (size_t)s->slots; i++) s->slot_shard[i] = -1;
    return 0;
}

void pk_router_stats_free(pk_router_stats *s)
{
    pk_free(s->recorded);
    pk_free(s->tokens);
    pk_free(s->selected);
    pk_free(s->budget);
    pk_free(s->kept);
    pk_free(s->slot_shard);
    pk_free(s->worker_load);
    memset(s, 0, sizeof *s);
}

int pk_router_place_shards(pk_router_stats *s, int layer)
{
    const int shards = s->n_head * s->experts;
    const size_t first = pk_router_stats_at(s, layer, 0);
    float *load = pk_malloc_array((size_t)shards, sizeof *load, "router placement");
    if (!load) return -1;
    for (int i = 0; i < shards; i++)
        load[i] = (float)s->kept[first + (size_t)i] * (float)s->selected[first + (size_t)i];
    pk_eplb_plan plan = {0};
    if (pk_eplb_rebalance(load, 1, shards, s->slots, 1, 1, s->workers, &plan)) {
        pk_free(load);
        return -1;
    }
    int *slot_shard = s->slot_shard + (size_t)layer * (size_t)s->slots;
    float *worker_load = s->worker_load + (size_t)layer * (size_t)s->workers;
    const int slots_per_worker = s->slots / s->workers;
    for (int w = 0; w < s->workers; w++) worker_load[w] = 0;
    for (int p = 0; p < s->slots; p++) {
        const int shard = plan.phy2log[p];
        slot_shard[p] = shard;
        worker_load[p / slots_per_worker] += load[shard] / (float)plan.logcnt[shard];
    }
    pk_eplb_plan_free(&plan);
    pk_free(load);
    return 0;
}

double pk_router_imbalance(const int *counts, int n)
{
    long sum = 0;
    int max = 0;
    for (int i = 0; i < n; i++) {
        sum += counts[i];
        max = counts[i] > max ? counts[i] : max;
    }
    return sum > 0 ? (double)max * n / (double)sum : 1.0;
}
