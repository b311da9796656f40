/* keydiff: keep the keys that differ most from the others (Park et al., 2025):
 * score = -cos(k_j, anchor), the anchor being the mean of the head's unit-length
 * keys (kvpress's choice: every key weighs the same, whatever its norm).
 * Attention-free, so it works with any attention kernel. */
#include "press/press.h"
#include "press/spec.h"
#include "util/mem.h"

#include <math.h>

static int keydiff_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    const int hd = v->cfg->head_dim;
    double *anchor = pk_malloc_array((size_t)hd, sizeof *anchor, "keydiff anchor");
    float *scratch = pk_press_alloc_rows(v);
    if (!anchor || !scratch) {
        pk_free(anchor);
        pk_free(scratch);
        return -1;
    }
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const float *keys = pk_press_rows(v, h, 0, scratch);
        for (int d = 0; d < hd; d++) anchor[d] = 0;
        for (int j = 0; j < kh->len; j++) {
            const float *k = keys + (size_t)j * (size_t)hd;
            double norm = 0;
            for (int d = 0; d < hd; d++) norm += (double)k[d] * k[d];
            norm = norm > 0 ? sqrt(norm) : 1;
            for (int d = 0; d < hd; d++) anchor[d] += k[d] / norm;
        }
        double anorm = 0;
        for (int d = 0; d < hd; d++) anorm += anchor[d] * anchor[d];
        anorm = sqrt(anorm);
        for (int j = 0; j < kh->len; j++) {
            const float *k = keys + (size_t)j * (size_t)hd;
            double dot = 0, knorm = 0;
            for (int d = 0; d < hd; d++) {
                dot += k[d] * anchor[d];
                knorm += (double)k[d] * k[d];
            }
            double denom = sqrt(knorm) * anorm;
            scores[h][j] = (float)-(denom > 0 ? dot / denom : 0.0);
        }
    }
    pk_free(anchor);
    pk_free(scratch);
    return 0;
}

static const pk_press_ops keydiff_ops = {.score = keydiff_score};

int pk_build_keydiff(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", NULL};
    double ratio;
    if (pk_press_scorer_spec(spec, keys, &ratio)) return -1;
    return pk_press_new("keydiff", &keydiff_ops, ratio, 0, out);
}
