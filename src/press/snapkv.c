/* snapkv: the queries at the end of the prompt (the observation window) show
 * which earlier entries the model will look at (Li et al., 2024). Score = mean
 * attention from the last `window` queries, smoothed by average pooling so that
 * neighbours of important entries stay too; the window itself is kept. */
#include "press/snapkv.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>

typedef struct {
    int window, kernel;
} snapkv_params;

int pk_snapkv_scores(const pk_press_view *v, int window, int kernel, float **scores)
{
    const int w = window < v->n_q ? window : v->n_q;
    const int32_t window_start = v->q_pos0 + v->n_q - w; /* first position inside the window */
    const int max_len = pk_kv_max_len(v->kv, v->layer);
    double *window_sum =
        pk_malloc_array((size_t)(max_len > 0 ? max_len : 1), sizeof *window_sum, "snapkv window attention");
    float *mean = pk_malloc_array((size_t)max_len, sizeof(float), "snapkv scores");
    int rc = window_sum && mean ? 0 : -1;
    for (int h = 0; rc == 0 && h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const int n = kh->len;
        if ((rc = pk_press_attention_sums(v, h, v->n_q - w, w, window_sum))) break;
        /* Mean over the window's queries, for the entries before the window. */
        int m = 0;
        for (int j = 0; j < n; j++)
            if (kh->pos[j] < window_start) mean[m++] = (float)(window_sum[j] / w);
        /* Average pooling over neighbours, zero padding counted in the mean. */
        const int half = kernel / 2;
        for (int j = 0, i = 0; j < n; j++) {
            if (kh->pos[j] >= window_start) {
                scores[h][j] = INFINITY;
                continue;
            }
            double sum = 0;
            for (int d = -half; d <= half; d++)
                if (i + d >= 0 && i + d < m) sum += mean[i + d];
            scores[h][j] = (float)(sum / kernel);
            i++;
        }
    }
    pk_free(window_sum);
    pk_free(mean);
    return rc;
}

int pk_snapkv_params(const pk_spec *spec, int *window, int *kernel)
{
    if (pk_spec_int(spec, "window", 64, 1, 1 << 20, window) || pk_spec_int(spec, "kernel", 5, 1, 1001, kernel))
        return -1;
    if (*kernel % 2 == 0) return pk_fail("press '%s': kernel=%d must be odd", spec->name, *kernel);
    return 0;
}

static int snapkv_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    const snapkv_params *sp = p->params;
    return pk_snapkv_scores(v, sp->window, sp->kernel, scores);
}

static const pk_press_ops snapkv_ops = {.score = snapkv_score};

int pk_build_snapkv(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "window", "kernel", NULL};
    double ratio;
    int window, kernel;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_snapkv_params(spec, &window, &kernel)) return -1;
    if (pk_press_new("snapkv", &snapkv_ops, ratio, sizeof(snapkv_params), out)) return -1;
    (*out)->caps = PK_PRESS_MEASURED;
    snapkv_params *sp = (*out)->params;
    sp->window = window;
    sp->kernel = kernel;
    return 0;
}
