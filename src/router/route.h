/* Query-time routing (moe_router with route=1): after the press has compressed
 * a cache, each later query of a head reads only the entries of its own top_k
 * experts, plus the entries that belong to every query -- the sinks and the
 * observation window, which the press never routed, and everything appended
 * after the compression (the question, the answer so far).
 *
 * The route table is what that needs of each (layer, head): the experts'
 * centroids, to route a query exactly as the press routed the keys, and the
 * experts of every entry the compression kept, in storage order. It describes
 * one cache as one compression left it; the forward pass checks that before
 * each call.
 *
 * It also keeps the statistics of the routing: how many of the visible entries
 * the queries read, and -- on every `sample_every`-th query position, where
 * full attention over the kept cache is computed as well -- the attention mass
 * that full attention puts on the entries the routing skipped. */
#ifndef PIKV_ROUTER_ROUTE_H
#define PIKV_ROUTER_ROUTE_H

#include "kv/kvcache.h"
#include "router/moe_router.h"

#include <stdint.h>

/* An entry every query reads (a sink or window entry). */
#define PK_ROUTE_ALWAYS ((int16_t)-2)

typedef struct {
    pk_routing experts;      /* the head's expert centroids (prob and slot unused);
                                no centroids when the head had nothing to route */
    int n_entries;           /* storage entries described: those the compression kept */
    int16_t *entry_experts;  /* [n_entries][top_k]: each entry's experts, best first;
                                PK_ROUTE_ALWAYS, or -1 for a slot left unfilled */
} pk_route_head;

/* What the routed queries did, over (query, layer, head) triples. */
typedef struct {
    long queries, sampled;
    double entries_read, entries_visible;
    double missed_sum, missed_max;
} pk_route_stats;

typedef struct pk_route_table {
    int n_layer, n_head, top_k, sample_every;
    pk_route_head *heads;    /* [n_layer * n_head] */
    const pk_kvcache *kv;    /* the cache described, and its epoch after the compression */
    unsigned epoch;
    pk_route_stats stats;    /* since the last reset */
} pk_route_table;

int pk_route_table_init(pk_route_table *t, int n_layer, int n_head, int top_k, int sample_every);
void pk_route_table_free(pk_route_table *t);

/* Describe one head after its compression: it takes over the centroids of
 * `routing` (which stays valid to free), and kept entry i, now at storage
 * index i, is routable token source[i] of the routing, or a sink or window
 * entry when source[i] < 0. */
int pk_route_head_set(pk_route_table *t, int layer, int head, pk_routing *routing, const int *source, int n_kept);

/* Record that the compression of `kv` is complete (call after the last layer). */
void pk_route_table_seal(pk_route_table *t, const pk_kvcache *kv);

/* Fail unless the table describes `kv` as it is now (same cache, not
 * compressed since). */
int pk_route_table_check(const pk_route_table *t, const pk_kvcache *kv);

/* The experts of head (layer, head) that query q is routed to: wanted
 * [PK_ROUTER_MAX_EXPERTS] gets 1 for each of its top_k, 0 elsewhere (all 0
 * when the head had nothing to route). */
void pk_route_wanted(const pk_route_table *t, int layer, int head, const float *q, unsigned char *wanted);

/* Whether a query routed to `wanted` reads storage entry j of head
 * (layer, head), the window aside: an entry appended after the compression,
 * a sink or window entry, or one of the wanted experts' entries. */
int pk_route_reads(const pk_route_table *t, int layer, int head, int j, const unsigned char *wanted);

/* The entries of head (layer, head) that a query q at position qpos reads:
 * among the causally visible entries 0..visible-1 that are inside the head's
 * attention window, those of the query's top_k experts, the sinks and window,
 * and the entries appended after the compression. Writes their storage indices
 * in ascending order to idx and returns their count; *n_visible gets the
 * number of visible entries inside the window (what full attention reads). */
int pk_route_select(const pk_route_table *t, int layer, int head, const pk_kv_head *kh, const float *q,
                    int32_t qpos, int visible, int *idx, int *n_visible);
/* pk_route_select for a query already routed to `wanted` (pk_route_wanted). */
int pk_route_gather(const pk_route_table *t, int layer, int head, const pk_kv_head *kh, const unsigned char *wanted,
                    int32_t qpos, int visible, int *idx, int *n_visible);

/* Whether the query at qpos is one whose missed attention mass is measured. */
static inline int pk_route_sampled(const pk_route_table *t, int32_t qpos) { return qpos % t->sample_every == 0; }

/* Add one routed query to the statistics: it read n_read of n_visible
 * entries, and full attention put `missed` of its mass on the others (< 0:
 * not measured). Safe to call from several threads. */
void pk_route_record(pk_route_table *t, int n_read, int n_visible, double missed);

#endif
