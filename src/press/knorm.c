/* knorm: keys with a small L2 norm draw the most attention (Devoto et al.,
 * 2024), so an entry's score is -||k_j||. Needs nothing but the keys. */
#include "press/press.h"
#include "press/spec.h"
#include "util/mem.h"

#include <math.h>

static int knorm_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    const int hd = v->cfg->head_dim;
    float *scratch = pk_press_alloc_rows(v);
    if (!scratch) return -1;
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const float *keys = pk_press_rows(v, h, 0, scratch);
        for (int j = 0; j < kh->len; j++) {
            const float *k = keys + (size_t)j * (size_t)hd;
            double sq = 0;
            for (int d = 0; d < hd; d++) sq += (double)k[d] * k[d];
            scores[h][j] = (float)-sqrt(sq);
        }
    }
    pk_free(scratch);
    return 0;
}

static const pk_press_ops knorm_ops = {.score = knorm_score};

int pk_build_knorm(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", NULL};
    double ratio;
    if (pk_press_scorer_spec(spec, keys, &ratio)) return -1;
    if (pk_press_new("knorm", &knorm_ops, ratio, 0, out)) return -1;
    (*out)->caps = PK_PRESS_QUERY_FREE;
    return 0;
}
