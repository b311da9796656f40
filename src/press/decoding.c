/* decoding(inner):every=N,target=T — compression while generating (kvpress's
 * DecodingPress). The prompt is prefilled whole; then, every N generated
 * tokens, each head is cut back to T entries using the inner scorer. Scorers
 * that look at queries see the last `window` queries of the sequence, which
 * this press records as they go by.
 *
 * The recorded queries make an attached decoding press stateful: it serves one
 * session at a time, and pikv_session_reset() starts it afresh. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

typedef struct {
    int every, target, window;
    int n_layer, width;       /* width = n_head * head_dim */
    float *recent;            /* [n_layer][window][width]: a ring of query rows */
    struct layer_state {
        int count;            /* query rows recorded */
        int since;            /* generated tokens since the last compression */
        int32_t last_pos;     /* position of the newest recorded row */
    } *layers;                /* [n_layer] */
    float *linear;            /* [window][width]: the ring unrolled, oldest first */
} decoding_params;

/* Remember the query rows of this call in the layer's ring. */
static void record_queries(decoding_params *dp, const pk_press_view *v)
{
    struct layer_state *L = &dp->layers[v->layer];
    float *ring = dp->recent + (size_t)v->layer * (size_t)dp->window * (size_t)dp->width;
    for (int t = 0; t < v->n_q; t++) {
        int slot = L->count % dp->window;
        memcpy(ring + (size_t)slot * (size_t)dp->width, v->q + (size_t)t * (size_t)v->q_stride,
               (size_t)dp->width * sizeof(float));
        L->count++;
    }
    L->last_pos = v->q_pos0 + v->n_q - 1;
}

/* A generated token (a call of one row) counts towards `every`; a prompt's
 * rows are only recorded. */
static int decoding_decides_next(const pk_press *p, int layer, int n_q)
{
    const decoding_params *dp = p->params;
    return dp->layers[layer].since + (n_q == 1) >= dp->every;
}

static int decoding_step(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    decoding_params *dp = p->params;
    struct layer_state *L = &dp->layers[v->layer];
    const int decides = decoding_decides_next(p, v->layer, v->n_q);
    record_queries(dp, v);
    if (!decides) {
        if (v->n_q == 1) L->since++;
        return 0;
    }
    L->since = 0;

    /* Unroll the ring, oldest row first, and score with those queries. */
    const int n = L->count < dp->window ? L->count : dp->window;
    const float *ring = dp->recent + (size_t)v->layer * (size_t)dp->window * (size_t)dp->width;
    for (int i = 0; i < n; i++) {
        int slot = (L->count - n + i) % dp->window;
        memcpy(dp->linear + (size_t)i * (size_t)dp->width, ring + (size_t)slot * (size_t)dp->width,
               (size_t)dp->width * sizeof(float));
    }
    pk_press_view recent = *v;
    recent.q = dp->linear;
    recent.q_stride = dp->width;
    recent.n_q = n;
    recent.q_pos0 = L->last_pos - n + 1;

    const int H = v->cfg->n_head;
    float **scores = pk_press_alloc_scores(v);
    int *n_keep = pk_malloc_array((size_t)H, sizeof *n_keep, "decoding budgets");
    int rc = -1;
    if (scores && n_keep && p->inner[0]->ops->score(p->inner[0], &recent, scores) == 0) {
        for (int h = 0; h < H; h++) n_keep[h] = dp->target;
        rc = pk_press_keep_top(v, scores, n_keep, out) == 0 ? 1 : -1;
    }
    pk_free(n_keep);
    pk_press_free_scores(v, scores);
    return rc;
}

static void decoding_destroy(pk_press *p)
{
    decoding_params *dp = p->params;
    pk_free(dp->recent);
    pk_free(dp->layers);
    pk_free(dp->linear);
}

static void decoding_restart(pk_press *p)
{
    decoding_params *dp = p->params;
    memset(dp->layers, 0, (size_t)dp->n_layer * sizeof *dp->layers);
}

static const pk_press_ops decoding_ops = {
    .decode_step = decoding_step,
    .decides_next = decoding_decides_next,
    .restart = decoding_restart,
    .destroy = decoding_destroy};

int pk_build_decoding(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"every", "target", "window", NULL};
    if (!env->model) return pk_fail("press 'decoding' needs a model (pikv_press_new's model is NULL)");
    const pikv_config *c = pikv_model_config(env->model);
    int every, target, window;
    pk_press *inner;
    if (pk_spec_check_keys(spec, keys) || pk_spec_int(spec, "every", 16, 1, 1 << 20, &every) ||
        pk_spec_int(spec, "target", 1024, 1, c->n_positions, &target) ||
        pk_spec_int(spec, "window", 64, 1, 4096, &window) || pk_press_inner_scorer(spec, env, &inner))
        return -1;
    if (pk_press_wrap("decoding", &decoding_ops, 0.0, sizeof(decoding_params), inner, out)) return -1;
    (*out)->caps = PK_PRESS_WHILE_DECODING | PK_PRESS_PER_RUN_STATE;
    decoding_params *dp = (*out)->params;
    dp->every = every;
    dp->target = target;
    dp->window = window;
    dp->n_layer = c->n_layer;
    dp->width = c->n_embd;
    dp->recent = pk_malloc_array((size_t)c->n_layer * (size_t)window * (size_t)c->n_embd, sizeof(float),
                                 "decoding query history");
    dp->layers = pk_calloc((size_t)c->n_layer, sizeof *dp->layers, "decoding counters");
    dp->linear = pk_malloc_array((size_t)window * (size_t)c->n_embd, sizeof(float), "decoding query history");
    if (!dp->recent || !dp->layers || !dp->linear) {
        pk_press_destroy(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}
