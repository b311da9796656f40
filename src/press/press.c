/* The press registry, the default score-then-top-k selection, and the
 * observation-window attention that several presses share. */
#include "press/press.h"
#include "press/spec.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <stdio.h>
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
    {"kvzip", pk_build_kvzip},
};

int pk_press_build(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    *out = NULL;
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        if (strcmp(spec->name, registry[i].name) == 0) {
            if (registry[i].build(spec, env, out)) return -1;
            if (env->model) {
                (*out)->n_layer = pikv_model_config(env->model)->n_layer;
                (*out)->n_head = pikv_model_config(env->model)->n_head;
            }
            return 0;
        }
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
    (*out)->caps = inner->caps & PK_PRESS_MEASURED; /* a wrapper reads only its inner scorer's scores */
    return 0;
}

void pk_press_destroy(pk_press *p)
{
    if (!p) return;
    void *owner = atomic_load(&p->owner);
    if (owner && p->forget) p->forget(owner, p);
    if (p->ops && p->ops->destroy) p->ops->destroy(p);
    for (int i = 0; i < p->n_inner; i++) pk_press_destroy(p->inner[i]);
    pk_free(p->recon_prompt);
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
        int len = pk_press_head(v, h)->len;
        if (!(scores[h] = pk_malloc_array((size_t)len, sizeof(float), "press scores"))) {
            pk_press_free_scores(v, scores);
            return NULL;
        }
    }
    return scores;
}

float *pk_press_alloc_rows(const pk_press_view *v)
{
    const int max_len = pk_kv_max_len(v->kv, v->layer);
    return pk_malloc_array((size_t)(max_len > 0 ? max_len : 1) * (size_t)v->cfg->head_dim, sizeof(float),
                           "decoded KV rows");
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

int pk_press_keep_top(const pk_press_view *v, float **scores, const int *n_keep, pk_keep_set *out)
{
    for (int h = 0; h < v->cfg->n_head; h++) {
        const int len = pk_press_head(v, h)->len;
        const int keep = n_keep[h] < 0 ? 0 : n_keep[h];
        if (keep >= len) continue;
        int *order = out->keep[h];
        for (int j = 0; j < len; j++) order[j] = j;
        qsort_r(order, (size_t)len, sizeof *order, by_score_desc, scores[h]);
        qsort(order, (size_t)keep, sizeof *order, ascending_int);
        out->n_keep[h] = keep;
    }
    return 0;
}

int pk_press_keep_top_at_ratio(const pk_press_view *v, float **scores, double ratio, pk_keep_set *out)
{
    const int H = v->cfg->n_head;
    int *n_keep = pk_malloc_array((size_t)H, sizeof *n_keep, "press budgets");
    if (!n_keep) return -1;
    for (int h = 0; h < H; h++) n_keep[h] = pk_press_n_kept(pk_press_head(v, h)->len, ratio);
    const int rc = pk_press_keep_top(v, scores, n_keep, out);
    pk_free(n_keep);
    return rc;
}

int pk_press_select_top(const pk_press *scorer, const pk_press_view *v, double ratio, pk_keep_set *out)
{
    if (ratio == 0) return 0;
    float **scores = pk_press_alloc_scores(v);
    int rc = -1;
    if (scores && scorer->ops->score(scorer, v, scores) == 0) rc = pk_press_keep_top_at_ratio(v, scores, ratio, out);
    pk_press_free_scores(v, scores);
    return rc;
}

int pk_press_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    return p->ops->select ? p->ops->select(p, v, out) : pk_press_select_top(p, v, p->ratio, out);
}

/* The capabilities that cannot run inside a composition, and why. */
static const struct {
    unsigned cap;
    const char *why;
} uncomposable[] = {
    {PK_PRESS_WHILE_DECODING, "acts while generating and cannot be composed; wrap the composition instead"},
    {PK_PRESS_ROUTES_QUERIES, "with route=1 cannot be composed: queries are routed through the cache it leaves, "
                              "so it must be the outermost press"},
    {PK_PRESS_CHUNKED_PREFILL, "with prefill_chunk cannot be composed: the presses before it would compress each "
                               "chunk; give prefill_chunk only to a duo press on its own"},
};

static const pk_press_ops sequence_ops = {0};

int pk_press_compose(const char *name, pk_press **parts, int n_parts, pk_press **out)
{
    *out = NULL;
    int rc = -1;
    if (n_parts < 1 || n_parts > PK_PRESS_MAX_INNER) {
        pk_fail("press '%s' composes 1 to %d presses, not %d", name, PK_PRESS_MAX_INNER, n_parts);
        goto fail;
    }
    for (int i = 0; i < n_parts; i++)
        for (size_t c = 0; c < sizeof uncomposable / sizeof *uncomposable; c++)
            if (parts[i]->caps & uncomposable[c].cap) {
                pk_fail("press '%s' %s", parts[i]->name, uncomposable[c].why);
                goto fail;
            }
    if (pk_press_new(name, &sequence_ops, 0.0, 0, out)) goto fail;
    (*out)->caps = PK_PRESS_SEQUENCE;
    for (int i = 0; i < n_parts; i++) (*out)->caps |= parts[i]->caps & PK_PRESS_PER_RUN_STATE;
    (*out)->n_layer = parts[0]->n_layer;
    (*out)->n_head = parts[0]->n_head;
    double kept = 1.0;
    for (int i = 0; i < n_parts; i++) {
        (*out)->inner[(*out)->n_inner++] = parts[i];
        kept *= 1.0 - parts[i]->ratio;
        parts[i] = NULL;
    }
    (*out)->ratio = 1.0 - kept;
    if (pk_press_reconstruction_part(*out)) {
        /* The composition then decides after the prefill, without the
         * context's queries: every other part must do without them. */
        for (int i = 0; i < (*out)->n_inner; i++) {
            const pk_press *part = (*out)->inner[i];
            if (!(part->caps & (PK_PRESS_QUERY_FREE | PK_PRESS_RECONSTRUCTION_SCORES))) {
                pk_fail("press '%s' scores from the context's queries, which are gone when kvzip decides after "
                        "its reconstruction; compose kvzip with duo, knorm, streaming_llm or none",
                        part->name);
                pk_press_destroy(*out);
                *out = NULL;
                return -1;
            }
        }
        (*out)->caps |= PK_PRESS_RECONSTRUCTION_SCORES;
    }
    rc = 0;
fail:
    for (int i = 0; i < n_parts; i++) {
        pk_press_destroy(parts[i]);
        parts[i] = NULL;
    }
    return rc;
}

const pk_press *pk_press_reconstruction_part(const pk_press *p)
{
    if (!(p->caps & PK_PRESS_SEQUENCE)) return p->caps & PK_PRESS_RECONSTRUCTION_SCORES ? p : NULL;
    for (int i = 0; i < p->n_inner; i++) {
        const pk_press *part = pk_press_reconstruction_part(p->inner[i]);
        if (part) return part;
    }
    return NULL;
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
    return p ? (p->caps & PK_PRESS_WHILE_DECODING) != 0 : pk_fail("pikv_press_acts_while_generating: press is NULL");
}

int pikv_press_routes_queries(const pikv_press *p)
{
    return p ? (p->caps & PK_PRESS_ROUTES_QUERIES) != 0 : pk_fail("pikv_press_routes_queries: press is NULL");
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
