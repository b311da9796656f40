/* pyramidkv: SnapKV scores with budgets that shrink linearly with depth (Cai et
 * al., 2024): lower layers spread attention widely and keep more, upper layers
 * focus and keep less; the mean over layers stays L * (1 - ratio). The budget
 * rule (beta sets the steepness) is kvpress's, which falls back to SnapKV's
 * uniform budget when the pyramid does not fit in the context. */
#include "press/snapkv.h"
#include "press/spec.h"
#include "util/mem.h"

#include <math.h>

typedef struct {
    int window, kernel;
    double beta;
} pyramid_params;

/* Entries layer `layer` of n_layer keeps out of len. */
int pk_pyramid_budget(int len, double ratio, int window, double beta, int layer, int n_layer)
{
    const double kept = len * (1.0 - ratio);
    double min_num = kept / beta, max_num = 2 * kept - min_num;
    if (max_num >= len - window) {
        max_num = len - window;
        min_num = 2 * kept - max_num;
    }
    if (!(len >= max_num && max_num >= min_num && min_num >= window) || n_layer < 2)
        return (int)lround(kept);
    double step = (max_num - min_num) / (n_layer - 1);
    return (int)lround(max_num - layer * step);
}

static int pyramid_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    if (p->ratio == 0) return 0;
    const pyramid_params *pp = p->params;
    const int H = v->cfg->n_head;
    float **scores = pk_press_alloc_scores(v);
    int *n_keep = pk_malloc_array((size_t)H, sizeof *n_keep, "pyramidkv budgets");
    int rc = -1;
    if (scores && n_keep && pk_snapkv_scores(v, pp->window, pp->kernel, scores) == 0) {
        for (int h = 0; h < H; h++)
            n_keep[h] = pk_pyramid_budget(pk_press_head(v, h)->len, p->ratio, pp->window, pp->beta,
                                          v->layer, v->cfg->n_layer);
        rc = pk_press_keep_top(v, scores, n_keep, out);
    }
    pk_free(n_keep);
    pk_press_free_scores(v, scores);
    return rc;
}

static const pk_press_ops pyramid_ops = {.select = pyramid_select};

int pk_build_pyramidkv(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "window", "kernel", "beta", NULL};
    double ratio, beta;
    int window, kernel;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_snapkv_params(spec, &window, &kernel) ||
        pk_spec_double(spec, "beta", 20.0, 1.0, 1e6, &beta))
        return -1;
    if (pk_press_new("pyramidkv", &pyramid_ops, ratio, sizeof(pyramid_params), out)) return -1;
    (*out)->caps = PK_PRESS_MEASURED;
    pyramid_params *pp = (*out)->params;
    pp->window = window;
    pp->kernel = kernel;
    pp->beta = beta;
    return 0;
}
