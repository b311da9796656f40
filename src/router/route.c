/* The route table of query-time routing: building it from a compression,
 * routing a query through it, and its statistics (see route.h). */
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

int pk_route_table_init(pk_route_table *t, int n_layer, int n_head, int top_k, int sample_every)
{
    memset(t, 0, sizeof *t);
    t->heads = pk_calloc((size_t)n_layer * (size_t)n_head, sizeof *t->heads, "route table");
    if (!t->heads) return -1;
    t->n_layer = n_layer;
    t->n_head = n_head;
    t->top_k = top_k;
    t->sample_every = sample_every;
    return 0;
}

/* Forget what one head described. */
static void head_clear(pk_route_head *h)
{
    pk_routing_free(&h->experts);
    pk_free(h->entry_experts);
    memset(h, 0, sizeof *h);
}

void pk_route_table_free(pk_route_table *t)
{
    for (int i = 0; t->heads && i < t->n_layer * t->n_head; i++) head_clear(&t->heads[i]);
    pk_free(t->heads);
    memset(t, 0, sizeof *t);
}

int pk_route_head_set(pk_route_table *t, int layer, int head, pk_routing *routing, const int *source, int n_kept)
{
    pk_route_head *h = &t->heads[(size_t)layer * (size_t)t->n_head + (size_t)head];
    const int K = t->top_k;
    head_clear(h);
    t->kv = NULL; /* not sealed until the whole compression is done */
    h->entry_experts = pk_malloc_array((size_t)(n_kept > 0 ? n_kept : 1) * (size_t)K, sizeof *h->entry_experts,
                                       "route table");
    if (!h->entry_experts) return -1;
    h->n_entries = n_kept;
    for (int i = 0; i < n_kept; i++)
        for (int s = 0; s < K; s++)
            h->entry_experts[(size_t)i * (size_t)K + (size_t)s] =
                source[i] < 0 ? PK_ROUTE_ALWAYS : (int16_t)routing->slot[(size_t)source[i] * (size_t)K + (size_t)s];
    if (routing && routing->centroids) {
        h->experts.cfg = routing->cfg;
        h->experts.dim = routing->dim;
        h->experts.centroids = routing->centroids;
        h->experts.group_centroids = routing->group_centroids;
        routing->centroids = routing->group_centroids = NULL;
    }
    return 0;
}

void pk_route_table_seal(pk_route_table *t, const pk_kvcache *kv)
{
    t->kv = kv;
    t->epoch = kv->epoch;
}

int pk_route_table_check(const pk_route_table *t, const pk_kvcache *kv)
{
    if (t->kv != kv || t->epoch != kv->epoch)
        return pk_fail("query-time routing: the press's route table no longer describes this cache (the press "
                       "compressed another cache, or this one was compressed again, since)");
    return 0;
}

void pk_route_wanted(const pk_route_table *t, int layer, int head, const float *q, unsigned char *wanted)
{
    const pk_route_head *h = &t->heads[(size_t)layer * (size_t)t->n_head + (size_t)head];
    memset(wanted, 0, PK_ROUTER_MAX_EXPERTS);
    if (!h->experts.centroids) return;
    int experts[PK_ROUTER_MAX_EXPERTS];
    pk_router_route_vector(&h->experts, q, experts);
    for (int s = 0; s < t->top_k; s++) wanted[experts[s]] = 1;
}

int pk_route_reads(const pk_route_table *t, int layer, int head, int j, const unsigned char *wanted)
{
    const pk_route_head *h = &t->heads[(size_t)layer * (size_t)t->n_head + (size_t)head];
    if (j >= h->n_entries) return 1;
    for (int s = 0; s < t->top_k; s++) {
        const int16_t e = h->entry_experts[(size_t)j * (size_t)t->top_k + (size_t)s];
        if (e == PK_ROUTE_ALWAYS || (e >= 0 && wanted[e])) return 1;
    }
    return 0;
}

int pk_route_select(const pk_route_table *t, int layer, int head, const pk_kv_head *kh, const float *q,
                    int32_t qpos, int visible, int *idx, int *n_visible)
{
    unsigned char wanted[PK_ROUTER_MAX_EXPERTS];
    pk_route_wanted(t, layer, head, q, wanted);
    return pk_route_gather(t, layer, head, kh, wanted, qpos, visible, idx, n_visible);
}

int pk_route_gather(const pk_route_table *t, int layer, int head, const pk_kv_head *kh, const unsigned char *wanted,
                    int32_t qpos, int visible, int *idx, int *n_visible)
{
    int n = 0, seen = 0;
    for (int j = 0; j < visible; j++) {
        if (!pk_kv_in_window(kh, j, qpos)) continue;
        seen++;
        if (pk_route_reads(t, layer, head, j, wanted)) idx[n++] = j;
    }
    *n_visible = seen;
    return n;
}

void pk_route_record(pk_route_table *t, int n_read, int n_visible, double missed)
{
#pragma omp critical(pk_route_record)
    {
        pk_route_stats *st = &t->stats;
        st->queries++;
        st->entries_read += n_read;
        st->entries_visible += n_visible;
        if (missed >= 0) {
            st->sampled++;
            st->missed_sum += missed;
            if (missed > st->missed_max) st->missed_max = missed;
        }
    }
}
