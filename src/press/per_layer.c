/* per_layer: one inner scorer with its own ratio in every layer, e.g.
 * per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/0.6 (kvpress's
 * PerLayerCompressionPress). The ratios are '/'-separated, one per layer. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int n_layer;
    double ratios[]; /* [n_layer] */
} per_layer_params;

static int per_layer_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    const per_layer_params *pp = p->params;
    return pk_press_select_top(p->inner[0], v, pp->ratios[v->layer], out);
}

static const pk_press_ops per_layer_ops = {.select = per_layer_select};

/* Parse "0.1/0.2/..." into exactly n ratios in [0, 1). */
static int parse_ratios(const char *text, int n, double *out)
{
    const char *s = text;
    for (int i = 0; i < n; i++) {
        char *end;
        out[i] = strtod(s, &end);
        if (end == s || (*end != '/' && *end != '\0') || !(out[i] >= 0 && out[i] < 1))
            return pk_fail("press 'per_layer': ratios=%s: entry %d is not a ratio in [0, 1)", text, i + 1);
        if (*end == '\0' && i + 1 < n)
            return pk_fail("press 'per_layer': ratios=%s gives %d ratios, the model has %d layers", text, i + 1, n);
        s = end + 1;
        if (*end == '\0') break;
        if (i + 1 == n)
            return pk_fail("press 'per_layer': ratios=%s gives more than %d ratios (one per layer)", text, n);
    }
    return 0;
}

int pk_build_per_layer(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratios", NULL};
    if (!env->model) return pk_fail("press 'per_layer' needs a model (pikv_press_new's model is NULL)");
    const int n_layer = pikv_model_config(env->model)->n_layer;
    const char *text = pk_spec_get(spec, "ratios");
    if (pk_spec_check_keys(spec, keys)) return -1;
    if (!text) return pk_fail("press 'per_layer' needs ratios=R1/R2/... (one per layer, %d here)", n_layer);
    double *ratios = pk_malloc_array((size_t)n_layer, sizeof *ratios, "per_layer ratios");
    pk_press *inner;
    if (!ratios || parse_ratios(text, n_layer, ratios) || pk_press_inner_scorer(spec, env, &inner)) {
        pk_free(ratios);
        return -1;
    }
    double mean = 0;
    for (int l = 0; l < n_layer; l++) mean += ratios[l] / n_layer;
    int rc = pk_press_wrap("per_layer", &per_layer_ops, mean, sizeof(per_layer_params) + (size_t)n_layer * sizeof(double),
                           inner, out);
    if (rc == 0) {
        per_layer_params *pp = (*out)->params;
        pp->n_layer = n_layer;
        memcpy(pp->ratios, ratios, (size_t)n_layer * sizeof *ratios);
    }
    pk_free(ratios);
    return rc;
}
