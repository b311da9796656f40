/* The press registry, the default score-then-top-k selection, and the
 * observation-window attention that several presses share. */
#include "press/press.h"
#include "press/spec.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    pk_press_builder build;
} registry[] = {
    {"none", pk_build_none},
    {"streaming_llm", pk_build_streaming_llm},
    {"knorm", pk_build_knorm},
    {"snapkv", pk_build_snapkv},
    {"tova", pk_build_tova},
    {"observed_attention", pk_build_observed_attention},
    {"expected_attention", pk_build_expected_attention},
    {"random", pk_build_random},
    {"keydiff", pk_build_keydiff},
    {"adakv", pk_build_adakv},
    {"pyramidkv", pk_build_pyramidkv},
    {"per_layer", pk_build_per_layer},
    {"chunkkv", pk_build_chunkkv},
    {"composed", pk_build_composed},
    {"decoding", pk_build_decoding},
    {"moe_router", pk_build_moe_router},
    {"duo", pk_build_duo},
    {"eplb_duo", pk_build_eplb_duo},
};

int pk_press_build(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    *out = NULL;
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        if (strcmp(spec->name, registry[i].name) == 0) return registry[i].build(spec, env, out);
    char known[512] = "";
    size_t n = 0;
    for (size_t i = 0; i < sizeof registry / sizeof *registry && n < sizeof known; i++)
        n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", i ? ", " : "", registry[i].name);
    return pk_fail("unknown press '%s' (known: %s)", spec->name, known);
}

int pk_press_new(const char *name, const pk_press_ops *ops, double ratio, size_t params_size, pk_press **out)
{
    pk_press *p = pk_calloc(1, sizeof *p, "press");
    *out = p;
    if (!p) return -1;
    if (params_size && !(p->params = pk_calloc(1, params_size, "press parameters"))) {
        pk_free(p);
        *out = NULL;
        return -1;
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ops = ops;
    p->ratio = ratio;
    return 0;
}

int pk_press_wrap(const char *name, const pk_press_ops *ops, double ratio, size_t params_size, pk_press *inner,
                  pk_press **out)
{
    if (pk_press_new(name, ops, ratio, params_size, out)) {
        pk_press_destroy(inner);
        return -1;
    }
    (*out)->inner[0] = inner;
    (*out)->n_inner = 1;
    return 0;
}

void pk_press_destroy(pk_press *p)
{
    if (!p) return;
    if (p->ops && p->ops->destroy) p->ops->destroy(p);
    for (int i = 0; i < p->n_inner; i++) pk_press_destroy(p->inner[i]);
    pk_free(p->params);
    pk_free(p);
}

int pk_press_ratio_param(const pk_spec *spec, double dflt, double *ratio)
{
    return pk_spec_double_below(spec, "ratio", dflt, 0.0, 1.0, ratio);
}

int pk_press_inner_scorer(const pk_spec *spec, const pk_press_env *env, pk_press **inner)
{
    *inner = NULL;
    if (spec->n_children != 1)
        return pk_fail("press '%s' wraps one scorer press, e.g. %s(snapkv)", spec->name, spec->name);
    if (pk_spec_get(spec->children[0], "ratio"))
        return pk_fail("press '%s': give the ratio to %s, not to its inner press", spec->name, spec->name);
    if (pk_press_build(spec->children[0], env, inner)) return -1;
    if (!(*inner)->ops->score) {
        pk_fail("press '%s' needs a scorer inside (knorm, snapkv, ...), not '%s'", spec->name, (*inner)->name);
        pk_press_destroy(*inner);
        *inner = NULL;
        return -1;
    }
    return 0;
}

int pk_press_scorer_spec(const pk_spec *spec, const char *const *allowed, double *ratio)
{
    if (spec->n_children) return pk_fail("press '%s' takes no inner press", spec->name);
    if (pk_spec_check_keys(spec, allowed)) return -1;
    return pk_press_ratio_param(spec, 0.0, ratio);
}

float **pk_press_alloc_scores(const pk_press_view *v)
{
    int H = v->cfg->n_head;
    float **scores = pk_calloc((size_t)H, sizeof *scores, "press scores");
    if (!scores) return NULL;
    for (int h = 0; h < H; h++) {
        int len = pk_kv_at(v->kv, v->layer, h)->len;
        if (!(scores[h] = pk_malloc_array((size_t)len, sizeof(float), "press scores"))) {
            pk_press_free_scores(v, scores);
            return NULL;
        }
    }
    return scores;
}

void pk_press_free_scores(const pk_press_view *v, float **scores)
{
    if (!scores) return;
    for (int h = 0; h < v->cfg->n_head; h++) pk_free(scores[h]);
    pk_free(scores);
}

/* Order entry indices by score, highest first, earlier entry first on ties;
 * NaN scores sort last. */
static int by_score_desc(const void *a, const void *b, void *ctx)
{
    const float *s = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    float x = s[i], y = s[j];
    if (isnan(x) != isnan(y)) return isnan(x) ? 1 : -1;
    if (x != y && !isnan(x)) return x > y ? -1 : 1;
    return i - j;
}

static int ascending_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int pk_press_keep_top(const pk_press_view *v, float **scores, const int *n_keep)
{
    int max_len = 0;
    for (int h = 0; h < v->cfg->n_head; h++) {
        int len = pk_kv_at(v->kv, v->layer, h)->len;
        max_len = len > max_len ? len : max_len;
    }
    int *order = pk_malloc_array((size_t)max_len, sizeof *order, "press selection");
    if (!order) return -1;
    for (int h = 0; h < v->cfg->n_head; h++) {
        int len = pk_kv_at(v->kv, v->layer, h)->len;
        int keep = n_keep[h] < 0 ? 0 : n_keep[h];
        if (keep >= len) continue;
        for (int j = 0; j < len; j++) order[j] = j;
        qsort_r(order, (size_t)len, sizeof *order, by_score_desc, scores[h]);
        qsort(order, (size_t)keep, sizeof *order, ascending_int);
        if (pk_kv_keep(v->kv, v->layer, h, order, keep)) {
            pk_free(order);
            return -1;
        }
    }
    pk_free(order);
    return 0;
}

int pk_press_compress(pk_press *p, const pk_press_view *v)
{
    if (p->ops->compress) return p->ops->compress(p, v);
    if (p->ratio == 0) return 0;
    const int H = v->cfg->n_head;
    float **scores = pk_press_alloc_scores(v);
    int *n_keep = pk_malloc_array((size_t)H, sizeof *n_keep, "press budgets");
    int rc = -1;
    if (scores && n_keep && p->ops->score(p, v, scores) == 0) {
        for (int h = 0; h < H; h++) n_keep[h] = pk_press_n_kept(pk_kv_at(v->kv, v->layer, h)->len, p->ratio);
        rc = pk_press_keep_top(v, scores, n_keep);
    }
    pk_free(n_keep);
    pk_press_free_scores(v, scores);
    return rc;
}

void pk_query_attention(const pk_press_view *v, int head, int row0, int rows, float *out)
{
    const pk_kv_head *kh = pk_kv_at(v->kv, v->layer, head);
    const int n = kh->len, hd = v->cfg->head_dim;
    /* out[rows, n] = Q[rows, hd] · K[n, hd]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hd, 1.f,
                v->q + (size_t)row0 * (size_t)v->q_stride + (size_t)head * (size_t)hd, v->q_stride, kh->k, hd,
                0.f, out, n);
    for (int r = 0; r < rows; r++) {
        float *row = out + (size_t)r * (size_t)n;
        const int32_t qpos = v->q_pos0 + row0 + r;
        float max = -INFINITY;
        for (int j = 0; j < n; j++)
            if (kh->pos[j] <= qpos && row[j] > max) max = row[j];
        double sum = 0;
        for (int j = 0; j < n; j++) {
            row[j] = kh->pos[j] <= qpos ? expf(v->scale * (row[j] - max)) : 0.f;
            sum += row[j];
        }
        float inv = sum > 0 ? (float)(1.0 / sum) : 0.f;
        for (int j = 0; j < n; j++) row[j] *= inv;
    }
}

pikv_press *pikv_press_new(const char *spec_text, const pikv_model *m, const char *model_dir)
{
    if (!spec_text) {
        pk_fail("pikv_press_new: spec is NULL");
        return NULL;
    }
    pk_spec *spec;
    if (pk_spec_parse(spec_text, &spec)) return NULL;
    pk_press_env env = {m, model_dir};
    pk_press *p;
    int rc = pk_press_build(spec, &env, &p);
    pk_spec_free(spec);
    return rc ? NULL : p;
}

void pikv_press_free(pikv_press *p) { pk_press_destroy(p); }

const char *pikv_press_name(const pikv_press *p)
{
    if (!p) pk_fail("pikv_press_name: press is NULL");
    return p ? p->name : NULL;
}

double pikv_press_ratio(const pikv_press *p) { return p ? p->ratio : pk_fail("pikv_press_ratio: press is NULL"); }

int pikv_press_acts_while_generating(const pikv_press *p)
{
    return p ? p->ops->after_call != NULL : pk_fail("pikv_press_acts_while_generating: press is NULL");
}

int pikv_press_routing_stats(pikv_press *p, pikv_routing_stats *st, int reset)
{
    if (!p || !st) return pk_fail("pikv_press_routing_stats: press or output is NULL");
    pk_route_table *t = p->ops->routing ? p->ops->routing(p) : NULL;
    memset(st, 0, sizeof *st);
    if (!t) return pk_fail("press '%s' does not route queries (moe_router with route=1 does)", p->name);
    const pk_route_stats *rs = &t->stats;
    st->queries = rs->queries;
    st->fraction_read = rs->entries_visible > 0 ? rs->entries_read / rs->entries_visible : 1.0;
    st->sampled = rs->sampled;
    st->mass_missed = rs->sampled ? rs->missed_sum / (double)rs->sampled : 0.0;
    st->mass_missed_max = rs->missed_max;
    if (reset) memset(&t->stats, 0, sizeof t->stats);
    return 0;
}
