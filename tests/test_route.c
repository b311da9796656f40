/* Query-time routing (moe_router route=1): the route table on hand-worked
 * cases, routed decoding against a dense reference over exactly the routed
 * entries (a forward pass written out here, in double precision), top_k =
 * experts against the press without routing, the statistics, and misuse. */
#include "check.h"
#include "eval/retrieval.h"
#include "model/model.h"
#include "engine/session.h"
#include "pikv.h"
#include "router/route.h"
#include "util/mem.h"

#include <string.h>

#define MODEL "models/pikv-ref-14m"

static pikv_model *model;
static pk_haystack haystack;

static pk_task context_of(int n, uint64_t seed)
{
    pk_task t;
    pk_task_make(&haystack, PK_TASK_PASSKEY, 1, n, 0.4, seed, &t);
    return t;
}

/* A routing of two-dimensional keys over the experts whose unit centroids
 * are given, with each token's slots; pk_route_head_set takes over its
 * centroids. */
static pk_routing hand_routing(int experts, int top_k, const float *centroids, const int *slots, int n)
{
    pk_routing r = {.cfg = {.kind = PK_ROUTER_BASE, .experts = experts, .top_k = top_k}, .n = n, .dim = 2};
    r.centroids = pk_malloc_array((size_t)experts * 2, sizeof(float), "test");
    r.slot = pk_malloc_array((size_t)n * (size_t)top_k, sizeof(int), "test");
    memcpy(r.centroids, centroids, (size_t)experts * 2 * sizeof(float));
    memcpy(r.slot, slots, (size_t)n * (size_t)top_k * sizeof(int));
    return r;
}

/* Which entries a query reads, as a string of storage indices ("0 1 3"). */
static const char *read_set(const pk_route_table *t, const pk_kv_head *kh, const float *q, int visible, int *n_vis)
{
    static char out[128];
    int idx[16];
    const int n = pk_route_select(t, 0, 0, kh, q, 100, visible, idx, n_vis);
    out[0] = 0;
    for (int i = 0; i < n; i++) snprintf(out + strlen(out), sizeof out - strlen(out), "%s%d", i ? " " : "", idx[i]);
    return out;
}

/* Hand-worked tables: two experts along the axes; kept entries 0 (a sink),
 * 1 (expert 0), 2 (expert 1), 3 (expert 0) and 4 (a window entry), then two
 * entries appended after the compression. */
static void check_hand_table(void)
{
    static const float axes[] = {1, 0, 0, 1};
    static const int slots1[] = {0, 1, 0}; /* routable tokens 0, 1, 2 */
    static const int source[] = {-1, 0, 1, 2, -1};
    pk_route_table t;
    pk_route_table_init(&t, 1, 1, 1, 4);
    pk_routing r = hand_routing(2, 1, axes, slots1, 3);
    CHECK(pk_route_head_set(&t, 0, 0, &r, source, 5) == 0 && r.centroids == NULL, "the table takes the centroids");
    pk_routing_free(&r);
    pk_kv_head kh = {.len = 7};
    int n_vis;
    const float east[] = {2, 0.5f}, north[] = {-0.1f, 3};
    CHECK(strcmp(read_set(&t, &kh, east, 7, &n_vis), "0 1 3 4 5 6") == 0 && n_vis == 7,
          "top_k=1, a query near expert 0 reads sink, 1, 3, window and appended: %s", read_set(&t, &kh, east, 7, &n_vis));
    CHECK(strcmp(read_set(&t, &kh, north, 7, &n_vis), "0 2 4 5 6") == 0, "a query near expert 1: %s",
          read_set(&t, &kh, north, 7, &n_vis));
    CHECK(strcmp(read_set(&t, &kh, north, 3, &n_vis), "0 2") == 0 && n_vis == 3,
          "only causally visible entries: %s", read_set(&t, &kh, north, 3, &n_vis));
    /* A streaming window (sink 1, recent 2) hides entries 1..4 from a query at 100. */
    int32_t pos[] = {0, 10, 20, 30, 40, 99, 100};
    pk_kv_head window = {.len = 7, .pos = pos, .sink = 1, .recent = 2};
    CHECK(strcmp(read_set(&t, &window, east, 7, &n_vis), "0 5 6") == 0 && n_vis == 3,
          "entries outside the attention window are neither read nor visible: %s n_visible %d",
          read_set(&t, &window, east, 7, &n_vis), n_vis);

    /* top_k = 2 of 2: every entry in both experts, every query reads all. */
    static const int slots2[] = {0, 1, 1, 0, 0, -1}; /* token 2 has an unfilled second slot */
    pk_route_table t2;
    pk_route_table_init(&t2, 1, 1, 2, 1);
    r = hand_routing(2, 2, axes, slots2, 3);
    pk_route_head_set(&t2, 0, 0, &r, source, 5);
    pk_routing_free(&r);
    CHECK(strcmp(read_set(&t2, &kh, north, 7, &n_vis), "0 1 2 3 4 5 6") == 0, "top_k = experts reads all: %s",
          read_set(&t2, &kh, north, 7, &n_vis));
    /* An entry routed to no expert (all slots unfilled) is never read. */
    static const int slots_none[] = {0, -1, 1};
    static const int source3[] = {0, 1, 2};
    r = hand_routing(2, 1, axes, slots_none, 3);
    pk_route_head_set(&t, 0, 0, &r, source3, 3);
    pk_routing_free(&r);
    CHECK(strcmp(read_set(&t, &kh, east, 3, &n_vis), "0") == 0 && strcmp(read_set(&t, &kh, north, 4, &n_vis), "2 3") == 0,
          "an unrouted entry is skipped: %s", read_set(&t, &kh, east, 3, &n_vis));

    /* The table describes one cache as one compression left it. */
    pk_kvcache a = {0}, b = {0};
    CHECK(pk_route_table_check(&t, &a) != 0, "an unsealed table fails the check");
    pk_route_table_seal(&t, &a);
    CHECK(pk_route_table_check(&t, &a) == 0, "the sealed cache passes");
    CHECK(pk_route_table_check(&t, &b) != 0, "another cache fails");
    a.epoch++;
    CHECK(pk_route_table_check(&t, &a) != 0 && strstr(pikv_last_error(), "no longer describes"),
          "a cache compressed again fails: %s", pikv_last_error());

    /* Statistics: fraction read is a ratio of sums; the mass is a mean over sampled queries. */
    pk_route_record(&t, 3, 6, 0.25);
    pk_route_record(&t, 2, 4, -1);
    pk_route_record(&t, 5, 10, 0.05);
    CHECK(t.stats.queries == 3 && t.stats.sampled == 2 && t.stats.entries_read == 10 &&
              t.stats.entries_visible == 20 && fabs(t.stats.missed_sum - 0.30) < 1e-12 && t.stats.missed_max == 0.25,
          "statistics add up");
    CHECK(pk_route_sampled(&t, 8) && !pk_route_sampled(&t, 9), "every 4th position is sampled");
    pk_route_table_free(&t);
    pk_route_table_free(&t2);
}

/* ---- the dense reference: one decode step of GPT-2, in double ---------- */

static void layernorm(double *out, const double *x, const float *w, const float *b, int C, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= C;
    for (int i = 0; i < C; i++) out[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
}

/* y[out] = x[in] · W[in, out] + b */
static void affine(double *y, const double *x, const float *W, const float *b, int in, int out)
{
    for (int o = 0; o < out; o++) y[o] = b[o];
    for (int i = 0; i < in; i++)
        for (int o = 0; o < out; o++) y[o] += x[i] * W[(size_t)i * (size_t)out + (size_t)o];
}

/* Cosines of q to the `count` unit rows of centroids. */
static void cosines_of(const double *q, int dim, const float *centroids, int count, double *out)
{
    double norm = 0;
    for (int d = 0; d < dim; d++) norm += q[d] * q[d];
    for (int c = 0; c < count; c++) {
        out[c] = 0;
        for (int d = 0; d < dim; d++) out[c] += q[d] * centroids[(size_t)c * (size_t)dim + (size_t)d];
        out[c] /= sqrt(norm);
    }
}

/* The query's top_k experts: by cosine to the centroids (the router's softmax
 * keeps that order), or for the hierarchical router inside the group whose
 * centroid is closest (a group's probability mass is its softmax weight). */
static void query_experts(const pk_routing *r, const double *q, unsigned char *wanted)
{
    double cosine[PK_ROUTER_MAX_EXPERTS], group_cosine[PK_ROUTER_MAX_EXPERTS];
    int first = 0, span = r->cfg.experts;
    cosines_of(q, r->dim, r->centroids, r->cfg.experts, cosine);
    if (r->group_centroids) {
        cosines_of(q, r->dim, r->group_centroids, r->cfg.groups, group_cosine);
        int best = 0;
        for (int g = 1; g < r->cfg.groups; g++) best = group_cosine[g] > group_cosine[best] ? g : best;
        span = r->cfg.experts / r->cfg.groups;
        first = best * span;
    }
    memset(wanted, 0, PK_ROUTER_MAX_EXPERTS);
    for (int k = 0; k < r->cfg.top_k; k++) {
        int best = -1;
        for (int e = first; e < first + span; e++)
            if (!wanted[e] && (best < 0 || cosine[e] > cosine[best])) best = e;
        wanted[best] = 1;
    }
}

/* The logits of token id at the session's next position, computed from the
 * session's cache as it is before that step: every head attends to its
 * routed entries (route table t; every entry when t is NULL) and the new token. */
static void reference_step(const pikv_session *s, const pk_route_table *t, int32_t id, double *logits)
{
    const pikv_model *m = s->model;
    const pikv_config *c = &m->cfg;
    const int C = c->n_embd, F = c->n_inner, H = c->n_head, hd = c->head_dim;
    double *x = calloc((size_t)C, sizeof *x), *xn = calloc((size_t)C, sizeof *xn);
    double *qkv = calloc(3 * (size_t)C, sizeof *qkv), *att = calloc((size_t)C, sizeof *att);
    double *fc = calloc((size_t)F, sizeof *fc), *tmp = calloc((size_t)C, sizeof *tmp);
    double *w = calloc((size_t)c->n_positions + 1, sizeof *w);
    for (int i = 0; i < C; i++) x[i] = (double)((const float *)m->wte.data)[(size_t)id * C + i] + m->wpe[(size_t)s->fwd.pos * C + i];
    for (int l = 0; l < c->n_layer; l++) {
        const pk_layer *L = &m->layers[l];
        layernorm(xn, x, L->ln_1_w, L->ln_1_b, C, c->layer_norm_epsilon);
        affine(qkv, xn, L->attn_w.data, L->attn_b, C, 3 * C);
        for (int h = 0; h < H; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&s->fwd.kv, l, h);
            const pk_route_head *rh = t ? &t->heads[l * H + h] : NULL;
            const double *q = qkv + h * hd, *k_new = qkv + C + h * hd, *v_new = qkv + 2 * C + h * hd;
            unsigned char wanted[PK_ROUTER_MAX_EXPERTS] = {0};
            if (rh && rh->experts.centroids) query_experts(&rh->experts, q, wanted);
            double max = -1e300, sum = 0;
            for (int j = 0; j <= kh->len; j++) { /* entry len is the new token */
                int read = !rh || j >= rh->n_entries;
                for (int k = 0; !read && k < t->top_k; k++) {
                    const int e = rh->entry_experts[j * t->top_k + k];
                    read = e == PK_ROUTE_ALWAYS || (e >= 0 && wanted[e]);
                }
                w[j] = -1e300;
                if (!read) continue;
                double dot = 0;
                const float *keys = pk_kv_f32_rows(kh, 0);
                for (int d = 0; d < hd; d++) dot += q[d] * (j < kh->len ? keys[(size_t)j * hd + d] : k_new[d]);
                w[j] = dot / sqrt((double)hd);
                max = w[j] > max ? w[j] : max;
            }
            for (int j = 0; j <= kh->len; j++) sum += w[j] = w[j] > -1e299 ? exp(w[j] - max) : 0;
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (int j = 0; j <= kh->len; j++)
                    if (w[j] > 0) o += w[j] * (j < kh->len ? pk_kv_f32_rows(kh, 1)[(size_t)j * hd + d] : v_new[d]);
                att[h * hd + d] = o / sum;
            }
        }
        affine(tmp, att, L->attn_proj_w.data, L->attn_proj_b, C, C);
        for (int i = 0; i < C; i++) x[i] += tmp[i];
        layernorm(xn, x, L->ln_2_w, L->ln_2_b, C, c->layer_norm_epsilon);
        affine(fc, xn, L->fc_w.data, L->fc_b, C, F);
        for (int i = 0; i < F; i++) /* gelu_new */
            fc[i] = 0.5 * fc[i] * (1 + tanh(sqrt(2 / M_PI) * (fc[i] + 0.044715 * fc[i] * fc[i] * fc[i])));
        affine(tmp, fc, L->fc_proj_w.data, L->fc_proj_b, F, C);
        for (int i = 0; i < C; i++) x[i] += tmp[i];
    }
    layernorm(xn, x, m->ln_f_w, m->ln_f_b, C, c->layer_norm_epsilon);
    for (int v = 0; v < c->vocab_size; v++) {
        double dot = 0;
        for (int i = 0; i < C; i++) dot += xn[i] * ((const float *)m->lm_head.data)[(size_t)v * C + i];
        logits[v] = dot;
    }
    free(x), free(xn), free(qkv), free(att), free(fc), free(tmp), free(w);
}

static double rel_l2_double(const float *a, const double *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return sqrt(num / den);
}

/* Routed decoding equals dense attention over exactly the routed entries,
 * step after step (each step checked against the reference computed from the
 * cache before it), while reading a strict part of the cache; the reference
 * over every entry differs, so the check can tell. */
static void check_routed_decode(const char *spec)
{
    const int V = model->cfg.vocab_size, steps = 4;
    pk_task task = context_of(500, 3);
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session *s = pikv_session_new(model, 2);
    float *logits = malloc((size_t)V * sizeof *logits);
    double *ref = malloc((size_t)V * sizeof *ref), *full = malloc((size_t)V * sizeof *full);
    pikv_routing_stats st;
    CHECK(p && pikv_prefill(s, task.context, task.n_context, p, logits) == 0, "%s: prefill", spec);
    const pk_route_table *t = s->routing.table;
    double worst = 0, nearest_full = 1e300;
    for (int i = 0; t && i < steps; i++) {
        const int32_t id = (int32_t)(1000 + 37 * i);
        reference_step(s, t, id, ref);
        reference_step(s, NULL, id, full);
        pikv_forward(s, &id, 1, logits, 0);
        worst = fmax(worst, rel_l2_double(logits, ref, V));
        nearest_full = fmin(nearest_full, rel_l2_double(logits, full, V));
    }
    /* float32 against float64: 1.7e-5 seen in the sanitizer build on an AVX-512 machine; every entry's
     * attention is more than 1e-4 away. */
    CHECK(t && worst < 5e-5, "%s: routed decode vs dense attention over the routed entries: %.3g", spec, worst);
    CHECK(nearest_full > 1e-4, "%s: ... and unlike attention over every entry (%.3g)", spec, nearest_full);
    pikv_press_routing_stats(p, &st, 0);
    CHECK(st.queries == (long)steps * model->cfg.n_layer * model->cfg.n_head && st.fraction_read > 0.05 &&
              st.fraction_read < 0.99,
          "%s: %ld routed queries read %.3f of the cache", spec, st.queries, st.fraction_read);
    CHECK(st.sampled > 0 && st.mass_missed > 0 && st.mass_missed < 1 && st.mass_missed_max >= st.mass_missed,
          "%s: %ld sampled, mass missed %.4f (max %.4f)", spec, st.sampled, st.mass_missed, st.mass_missed_max);
    free(logits), free(ref), free(full);
    pikv_session_free(s);
    pikv_press_free(p);
    pk_task_free(&task);
}

/* A multi-token call (a question) reads what token-by-token decoding reads. */
static void check_routed_block(void)
{
    const int V = model->cfg.vocab_size;
    const int32_t question[5] = {464, 1994, 318, 25, 220};
    pk_task task = context_of(400, 5);
    pikv_press *p = pikv_press_new("moe_router:ratio=0.5,window=16,route=1", model, MODEL);
    pikv_session *one = pikv_session_new(model, 2), *block = pikv_session_new(model, 2);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    pikv_prefill(one, task.context, task.n_context, p, a);
    pikv_session_mark(one);
    for (int i = 0; i < 5; i++) pikv_forward(one, &question[i], 1, a, 0);
    /* The press's route table belongs to the first session until it lets go:
     * a second session cannot take the press meanwhile. */
    CHECK(pikv_prefill(block, task.context, task.n_context, p, b) != 0 &&
              strstr(pikv_last_error(), "in use by another session"),
          "a second session cannot take a routing press another holds: %s", pikv_last_error());
    pikv_session_reset(one);
    CHECK(pikv_prefill(block, task.context, task.n_context, p, b) == 0, "after a reset the press is free again: %s",
          pikv_last_error());
    CHECK(pikv_forward(block, question, 5, b, 0) == 0, "a routed multi-token call runs");
    CHECK(rel_l2(b, a, (size_t)V) < 1e-5, "a 5-token call vs 5 decode steps: %.3g", rel_l2(b, a, (size_t)V));
    free(a), free(b);
    pikv_session_free(one);
    pikv_session_free(block);
    pikv_press_free(p);
    pk_task_free(&task);
}

/* With top_k = experts every query reads everything: the logits are those of
 * the same press without routing, nothing is missed. */
static void check_all_experts(const char *router)
{
    const int V = model->cfg.vocab_size;
    char plain_spec[128], routed_spec[160];
    snprintf(plain_spec, sizeof plain_spec, "moe_router:router=%s,experts=4,top_k=4,ratio=0.6,window=16", router);
    snprintf(routed_spec, sizeof routed_spec, "%s,route=1,sample=1", plain_spec);
    pk_task task = context_of(600, 7);
    pikv_press *routed = pikv_press_new(routed_spec, model, MODEL), *plain = pikv_press_new(plain_spec, model, MODEL);
    pikv_session *a = pikv_session_new(model, 2), *b = pikv_session_new(model, 2);
    float *la = malloc((size_t)V * sizeof *la), *lb = malloc((size_t)V * sizeof *lb);
    pikv_prefill(a, task.context, task.n_context, routed, la);
    pikv_prefill(b, task.context, task.n_context, plain, lb);
    double worst = rel_l2(la, lb, (size_t)V);
    for (int i = 0; i < 12; i++) {
        const int32_t id = (int32_t)(200 + 91 * i);
        pikv_forward(a, &id, 1, la, 0);
        pikv_forward(b, &id, 1, lb, 0);
        worst = fmax(worst, rel_l2(la, lb, (size_t)V));
    }
    pikv_routing_stats st;
    pikv_press_routing_stats(routed, &st, 1);
    CHECK(worst < 1e-5, "%s top_k = experts: routed vs not routed over 12 steps: %.3g", router, worst);
    CHECK(st.fraction_read == 1.0 && st.sampled == st.queries && st.queries > 0 && st.mass_missed < 1e-6,
          "%s top_k = experts: read %.4f, missed %.3g over %ld sampled", router, st.fraction_read, st.mass_missed,
          st.sampled);
    pikv_press_routing_stats(routed, &st, 0);
    CHECK(st.queries == 0 && st.sampled == 0, "reset zeroes the statistics");
    free(la), free(lb);
    pikv_session_free(a);
    pikv_session_free(b);
    pikv_press_free(routed);
    pikv_press_free(plain);
    pk_task_free(&task);
}

/* Misuse gets an error that says what is wrong. */
static void check_misuse(void)
{
    pikv_routing_stats st;
    pikv_press *snap = pikv_press_new("snapkv:0.5", model, MODEL);
    CHECK(pikv_press_routing_stats(snap, &st, 0) != 0 && strstr(pikv_last_error(), "does not route"),
          "another press has no routing statistics: %s", pikv_last_error());
    pikv_press_free(snap);
    const char *bad[][2] = {
        {"moe_router:route=2", "route=2 is out of range"},
        {"moe_router:route=1,sample=0", "sample=0 is out of range"},
        {"composed[moe_router:ratio=0.3,route=1,knorm:0.2]", "must be the outermost press"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        pikv_press *p = pikv_press_new(bad[i][0], model, MODEL);
        CHECK(!p && strstr(pikv_last_error(), bad[i][1]), "%s: %s", bad[i][0], pikv_last_error());
        pikv_press_free(p);
    }
    pk_task task = context_of(300, 9);
    pikv_press *p = pikv_press_new("moe_router:ratio=0.5,route=1", model, MODEL);
    pikv_session *s = pikv_session_new(model, 2);
    float *logits = malloc((size_t)model->cfg.vocab_size * sizeof *logits);
    const int32_t id = 11;
    pikv_prefill(s, task.context, task.n_context, p, logits);
    pikv_session_set_workers(s, 2, 1);
    CHECK(pikv_forward(s, &id, 1, logits, 0) != 0 && strstr(pikv_last_error(), "placed workers"),
          "routing with placed workers is refused: %s", pikv_last_error());
    pikv_session_set_workers(s, 0, 1);
    CHECK(pikv_forward(s, &id, 1, logits, 0) == 0, "and runs without them");
    pikv_session_reset(s);
    pikv_prefill(s, task.context, task.n_context, NULL, logits);
    CHECK(s->routing.table == NULL && pikv_forward(s, &id, 1, logits, 0) == 0, "a reset ends the routing");
    free(logits);
    pikv_session_free(s);
    pikv_press_free(p);
    pk_task_free(&task);
}

/* Allocation failure anywhere in a routed prefill and decode step is an
 * error that says so, and the session can start again. */
static void check_allocation_failures(void)
{
    pk_task task = context_of(200, 11);
    float *logits = malloc((size_t)model->cfg.vocab_size * sizeof *logits);
    int failures = 0, reported = 1, succeeded = 0;
    for (long n = 1; n < 2000 && !succeeded; n++) {
        pikv_press *p = pikv_press_new("moe_router:ratio=0.5,window=16,route=1", model, MODEL);
        pikv_session *s = pikv_session_new(model, 2);
        const int32_t id = 5;
        pk_test_fail_alloc_after(n);
        int rc = pikv_prefill(s, task.context, task.n_context, p, logits) || pikv_forward(s, &id, 1, logits, 0);
        pk_test_fail_alloc_after(0);
        if (rc == 0) {
            succeeded = 1;
        } else {
            failures++;
            reported &= strstr(pikv_last_error(), "out of memory") != NULL;
            pikv_session_reset(s);
            rc = pikv_prefill(s, task.context, task.n_context, p, logits) || pikv_forward(s, &id, 1, logits, 0);
            reported &= rc == 0;
        }
        pikv_session_free(s);
        pikv_press_free(p);
    }
    CHECK(succeeded && failures >= 10 && reported, "routed prefill and decode: %d allocation failures, each "
          "reported and recovered from: %d", failures, reported);
    free(logits);
    pk_task_free(&task);
}

int main(void)
{
    model = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    if (!model || !tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        fprintf(stderr, "setup: %s\n", pikv_last_error());
        return 1;
    }
    check_hand_table();
    check_routed_decode("moe_router:router=eplb,experts=4,top_k=2,ratio=0.35,window=16,route=1,sample=2");
    check_routed_decode("moe_router:router=base,experts=8,top_k=1,ratio=0.5,window=16,route=1,sample=1");
    check_routed_decode("moe_router:router=topk_balanced,experts=4,top_k=1,ratio=0.2,sink=0,window=8,route=1,sample=1");
    check_routed_decode("moe_router:router=hierarchical,experts=8,groups=2,top_k=2,ratio=0.3,window=16,route=1,sample=1");
    check_routed_block();
    check_all_experts("eplb");
    check_all_experts("base");
    check_misuse();
    check_allocation_failures();
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    return check_done("route");
}
