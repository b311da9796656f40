/* moe_router: PiKVpress's MoERouterPress, rebuilt so that its experts are
 * real clusters of a head's keys and its budget is exact.
 * Experts are shards of one head's KV cache: outside the attention sinks (the
 * first `sink` entries) and the observation window (the entries of the last
 * `window` query rows), which always stay, a head's cached tokens are
 * clustered by their keys into `experts` experts with balanced spherical
 * k-means and routed by one of six routers (router/moe_router.h). The head
 * keeps exactly n_kept = floor(L * (1 - ratio)) entries, like a uniform press:
 * sinks and window first, and the rest of the budget split over the experts
 * (equal shares, or by attention share for `adaptive` and by window-query hits
 * for `pikv`), each expert keeping its tokens with the most window attention
 * (SnapKV's score without pooling; the key norm breaks ties). An expert with
 * fewer tokens than its share hands the rest to the others. The point is
 * coverage: unlike one global top-k, no region of key space is emptied.
 *
 * Spec: moe_router:router=eplb,experts=4,top_k=2,ratio=0.35, with optional
 * capacity=1.5 (topk_balanced), groups=2 (hierarchical), sink=4, window=64,
 * workers=2 (the workers eplb places the shards on, for the statistics). The
 * press records per-expert load statistics of its last run; read them with
 * pk_moe_router_stats.
 *
 * route=1 adds query-time routing (router/route.h): the press keeps the
 * experts' centroids and every kept entry's experts, and each later query of
 * the session reads only its own top_k experts, the sinks and window, and
 * what came after the compression; every `sample`-th query position (default
 * 8) also measures the attention mass that skipping the rest misses. */
#include "press/press.h"
#include "press/spec.h"
#include "router/moe_router.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    pk_router_config router;
    int sink, window, workers;
    pk_router_stats stats;
    int route, sample;
    pk_route_table table;   /* route=1: what later queries are routed through */
} moe_router_params;

/* Scratch for one layer, sized for its longest head. */
typedef struct {
    double *attention;    /* [len]: the window's attention weights summed over its rows */
    float *mean;          /* [len]: mean window attention of each entry */
    float *window_q;      /* [window rows][head_dim]: the head's window queries */
    float *routed_mean;   /* [len]: mean window attention of each routable key */
    float *norm;          /* [len]: key norm of each entry */
    float *key_norm;      /* [len]: key norm of each routable key */
    int *routable;        /* [len]: storage index of each routable key */
    int *subset;          /* [len]: storage indices of some routable keys (a k-means of a group) */
    int *keep_list;       /* [len] */
    int *source;          /* [len]: routable index of each kept entry, -1 for sinks and window */
    unsigned char *fixed; /* [len]: sink or window entry */
    unsigned char *keep;  /* [len]: routable key stays */
} layer_scratch;

/* Release a layer's scratch (missing buffers are fine). */
static void scratch_free(layer_scratch *s)
{
    pk_free(s->attention);
    pk_free(s->mean);
    pk_free(s->window_q);
    pk_free(s->routed_mean);
    pk_free(s->norm);
    pk_free(s->key_norm);
    pk_free(s->routable);
    pk_free(s->subset);
    pk_free(s->keep_list);
    pk_free(s->source);
    pk_free(s->fixed);
    pk_free(s->keep);
}

/* Allocate a layer's scratch for `rows` window queries and heads of up to len
 * entries; on failure nothing stays allocated. */
static int scratch_alloc(layer_scratch *s, int rows, int len, int head_dim)
{
    const size_t n = (size_t)(len > 0 ? len : 1);
    memset(s, 0, sizeof *s);
    s->attention = pk_malloc_array(n, sizeof(double), "moe_router window attention");
    s->mean = pk_malloc_array(n, sizeof(float), "moe_router scores");
    s->window_q = pk_malloc_array((size_t)(rows > 0 ? rows : 1) * (size_t)head_dim, sizeof(float), "moe_router queries");
    s->routed_mean = pk_malloc_array(n, sizeof(float), "moe_router scores");
    s->norm = pk_malloc_array(n, sizeof(float), "moe_router scores");
    s->key_norm = pk_malloc_array(n, sizeof(float), "moe_router scores");
    s->routable = pk_malloc_array(n, sizeof(int), "moe_router selection");
    s->subset = pk_malloc_array(n, sizeof(int), "moe_router selection");
    s->keep_list = pk_malloc_array(n, sizeof(int), "moe_router selection");
    s->source = pk_malloc_array(n, sizeof(int), "moe_router selection");
    s->fixed = pk_malloc_array(n, 1, "moe_router selection");
    s->keep = pk_malloc_array(n, 1, "moe_router selection");
    if (s->attention && s->mean && s->window_q && s->routed_mean && s->norm && s->key_norm && s->routable &&
        s->subset && s->keep_list && s->source && s->fixed && s->keep)
        return 0;
    scratch_free(s);
    return -1;
}

/* One head's routable entries as the router's keys (key i is entry
 * routable[i]), clustered and compared through the view's measures, so that
 * they are computed where the cache is. */
typedef struct {
    const pk_press_view *v;
    int head;
    layer_scratch *s;
    int n;
} head_keys;

static int head_kmeans(void *ctx, const int *which, int m, int k, int iterations, float *centroids, int *assign)
{
    head_keys *hk = ctx;
    const int *entries = hk->s->routable;
    if (which) {
        for (int i = 0; i < m; i++) hk->s->subset[i] = hk->s->routable[which[i]];
        entries = hk->s->subset;
    }
    return pk_press_kmeans(hk->v, hk->head, entries, m, k, iterations, centroids, assign);
}

static int head_cosines(void *ctx, const float *centroids, int count, float *out)
{
    head_keys *hk = ctx;
    return pk_press_key_cosines(hk->v, hk->head, hk->s->routable, hk->n, centroids, count, out);
}

/* Route, budget and select the routable entries of one head (its fixed ones
 * are already marked), record its statistics, list the kept entries in `out`
 * and (route=1) describe them in the route table. */
static int select_head(moe_router_params *mp, const pk_press_view *v, int head, int n_kept, int rows,
                       layer_scratch *s, pk_router_stats *stats, pk_keep_set *out)
{
    const pk_kv_head *kh = pk_press_head(v, head);
    const int len = kh->len, dim = v->cfg->head_dim, E = mp->router.experts, K = mp->router.top_k;
    int n_fixed = 0, n = 0;
    if (pk_press_key_norms(v, head, s->norm)) return -1;
    for (int j = 0; j < len; j++) {
        if (s->fixed[j]) {
            n_fixed++;
            continue;
        }
        s->key_norm[n] = s->norm[j];
        s->routed_mean[n] = s->mean[j];
        s->routable[n++] = j;
    }
    /* When the sinks and window alone exceed the budget, the earliest of them stay. */
    const int routed_budget = n_kept > n_fixed ? n_kept - n_fixed : 0;
    int *tokens = stats->tokens + pk_router_stats_at(stats, v->layer, head);
    int *selected = stats->selected + pk_router_stats_at(stats, v->layer, head);
    int *budget = stats->budget + pk_router_stats_at(stats, v->layer, head);
    int *kept = stats->kept + pk_router_stats_at(stats, v->layer, head);
    for (int e = 0; e < E; e++) tokens[e] = selected[e] = budget[e] = kept[e] = 0;
    memset(s->keep, 0, (size_t)n);
    pk_routing routing = {0};
    if (n > 0) {
        head_keys hk = {.v = v, .head = head, .s = s, .n = n};
        const pk_router_keys keys = {.ctx = &hk, .n = n, .dim = dim, .kmeans = head_kmeans, .cosines = head_cosines};
        if (pk_router_route(&mp->router, &keys, &routing)) return -1;
        int experts_of_query[PK_ROUTER_MAX_EXPERTS];
        if (pk_press_queries(v, head, v->n_q - rows, rows, s->window_q)) {
            pk_routing_free(&routing);
            return -1;
        }
        for (int r = 0; r < rows; r++) {
            pk_router_route_vector(&routing, s->window_q + (size_t)r * (size_t)dim, experts_of_query);
            for (int i = 0; i < K; i++) selected[experts_of_query[i]]++;
        }
        for (size_t i = 0; i < (size_t)n * (size_t)K; i++)
            if (routing.slot[i] >= 0) tokens[routing.slot[i]]++;
        double weight[PK_ROUTER_MAX_EXPERTS];
        pk_router_budget_weights(&routing, s->routed_mean, selected, weight);
        pk_router_split_budget(weight, E, routed_budget, budget);
        if (pk_router_select(&routing, s->routed_mean, s->key_norm, budget, s->keep, kept)) {
            pk_routing_free(&routing);
            return -1;
        }
    }
    int count = 0, fixed_left = n_kept < n_fixed ? n_kept : n_fixed;
    for (int j = 0, i = 0; j < len; j++) {
        const int routable = !s->fixed[j];
        if (routable ? s->keep[i] : fixed_left-- > 0) {
            s->source[count] = routable ? i : -1;
            s->keep_list[count++] = j;
        }
        i += routable;
    }
    memcpy(out->keep[head], s->keep_list, (size_t)count * sizeof *s->keep_list);
    out->n_keep[head] = count;
    int rc = mp->route ? pk_route_head_set(&mp->table, v->layer, head, &routing, s->source, count) : 0;
    pk_routing_free(&routing);
    return rc;
}

/* (Re)size the statistics (and the route table) for this model and forget
 * the last run when a new one starts at layer 0. */
static int prepare_stats(moe_router_params *mp, const pk_press_view *v)
{
    pk_router_stats *st = &mp->stats;
    if (st->n_layer != v->cfg->n_layer || st->n_head != v->cfg->n_head) {
        pk_router_stats_free(st);
        if (pk_router_stats_init(st, v->cfg->n_layer, v->cfg->n_head, mp->router.experts, mp->workers)) return -1;
    }
    if (mp->route && (mp->table.n_layer != v->cfg->n_layer || mp->table.n_head != v->cfg->n_head)) {
        pk_route_table_free(&mp->table);
        if (pk_route_table_init(&mp->table, v->cfg->n_layer, v->cfg->n_head, mp->router.top_k, mp->sample))
            return -1;
    }
    if (v->layer == 0) {
        memset(st->recorded, 0, (size_t)st->n_layer);
        for (size_t i = 0; i < (size_t)st->n_layer * (size_t)st->slots; i++) st->slot_shard[i] = -1;
    }
    return 0;
}

/* Select for one layer: per head, the window's mean attention to every entry
 * and which entries are sinks or window, then select_head; finally, for the
 * eplb router, the placement of the layer's shards. */
static int moe_router_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    moe_router_params *mp = p->params;
    const int H = v->cfg->n_head, rows = mp->window < v->n_q ? mp->window : v->n_q;
    const int32_t window_start = v->q_pos0 + v->n_q - rows; /* first position of the observation window */
    if (prepare_stats(mp, v)) return -1;
    layer_scratch s;
    if (scratch_alloc(&s, rows, pk_kv_max_len(v->kv, v->layer), v->cfg->head_dim)) return -1;
    for (int h = 0; h < H; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const int len = kh->len;
        if (pk_press_attention_sums(v, h, v->n_q - rows, rows, s.attention)) {
            scratch_free(&s);
            return -1;
        }
        for (int j = 0; j < len; j++) {
            s.mean[j] = (float)(s.attention[j] / rows);
            s.fixed[j] = j < mp->sink || kh->pos[j] >= window_start;
        }
        if (select_head(mp, v, h, pk_press_n_kept(len, p->ratio), rows, &s, &mp->stats, out)) {
            scratch_free(&s);
            return -1;
        }
    }
    scratch_free(&s);
    mp->stats.recorded[v->layer] = 1;
    return mp->router.kind == PK_ROUTER_EPLB ? pk_router_place_shards(&mp->stats, v->layer) : 0;
}

/* route=1: the route table (empty before the first compression). */
static pk_route_table *moe_router_routing(pk_press *p)
{
    moe_router_params *mp = p->params;
    return mp->route ? &mp->table : NULL;
}

/* Release the statistics and the route table, which the parameters point to. */
static void moe_router_destroy(pk_press *p)
{
    moe_router_params *mp = p->params;
    pk_router_stats_free(&mp->stats);
    pk_route_table_free(&mp->table);
}

static const pk_press_ops moe_router_ops = {
    .select = moe_router_select, .routing = moe_router_routing, .destroy = moe_router_destroy};

const pk_router_stats *pk_moe_router_stats(const pk_press *p)
{
    if (!p || p->ops != &moe_router_ops) return NULL;
    const pk_router_stats *st = &((const moe_router_params *)p->params)->stats;
    return st->n_layer ? st : NULL;
}

/* Read and check the router's parameters: the router by name, experts, top_k
 * (at most the experts, or the experts per group for hierarchical), the
 * capacity factor and the groups. */
static int router_params(const pk_spec *spec, pk_router_config *rc)
{
    const char *name = pk_spec_get(spec, "router");
    const int kind = pk_router_lookup(name ? name : "eplb");
    if (kind < 0) {
        char known[128] = "";
        size_t used = 0;
        for (int k = 0; k < PK_ROUTER_KINDS && used < sizeof known; k++)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", k ? ", " : "",
                                     pk_router_name((pk_router_kind)k));
        return pk_fail("press 'moe_router': unknown router '%s' (known: %s)", name, known);
    }
    rc->kind = (pk_router_kind)kind;
    if (pk_spec_int(spec, "experts", 4, 1, PK_ROUTER_MAX_EXPERTS, &rc->experts) ||
        pk_spec_int(spec, "top_k", rc->experts < 2 ? rc->experts : 2, 1, PK_ROUTER_MAX_EXPERTS, &rc->top_k) ||
        pk_spec_double(spec, "capacity", 1.5, 1.0, 1000.0, &rc->capacity) ||
        pk_spec_int(spec, "groups", 2, 1, PK_ROUTER_MAX_EXPERTS, &rc->groups))
        return -1;
    if (rc->top_k > rc->experts)
        return pk_fail("press 'moe_router': top_k=%d exceeds experts=%d", rc->top_k, rc->experts);
    if (rc->kind != PK_ROUTER_HIERARCHICAL) return 0;
    if (rc->experts % rc->groups != 0)
        return pk_fail("press 'moe_router': groups=%d does not divide experts=%d (router=hierarchical)", rc->groups,
                       rc->experts);
    if (rc->top_k > rc->experts / rc->groups)
        return pk_fail("press 'moe_router': top_k=%d exceeds the %d experts of a group (router=hierarchical)",
                       rc->top_k, rc->experts / rc->groups);
    return 0;
}

int pk_build_moe_router(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "router", "experts", "top_k", "capacity",
                                       "groups", "sink",   "window",  "workers", "route", "sample", NULL};
    double ratio;
    pk_router_config router;
    int sink, window, workers, route, sample;
    if (pk_press_scorer_spec(spec, keys, &ratio) || router_params(spec, &router) ||
        pk_spec_int(spec, "sink", 4, 0, 1 << 20, &sink) || pk_spec_int(spec, "window", 64, 1, 1 << 20, &window) ||
        pk_spec_int(spec, "workers", 2, 1, 1024, &workers) || pk_spec_int(spec, "route", 0, 0, 1, &route) ||
        pk_spec_int(spec, "sample", 8, 1, 1 << 20, &sample))
        return -1;
    if (pk_press_new("moe_router", &moe_router_ops, ratio, sizeof(moe_router_params), out)) return -1;
    moe_router_params *mp = (*out)->params;
    mp->router = router;
    mp->sink = sink;
    mp->window = window;
    mp->workers = workers;
    mp->route = route;
    (*out)->caps = PK_PRESS_PER_RUN_STATE | PK_PRESS_MEASURED | (route ? PK_PRESS_ROUTES_QUERIES : 0);
    mp->sample = sample;
    return 0;
}
