/* observed_attention: H2O-style heavy hitters (Zhang et al., 2023). An entry's
 * score is the total attention it received from every query of the prefill,
 * divided by the number of queries that could see it, so early entries are not
 * favoured just for having been visible longer. */
#include "press/press.h"
#include "press/spec.h"
#include "util/mem.h"

enum { ROW_BLOCK = 64 };

static int observed_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    const int max_len = pk_kv_max_len(v->kv, v->layer);
    float *att = pk_malloc_array((size_t)ROW_BLOCK * (size_t)max_len, sizeof(float), "observed attention");
    double *total = pk_malloc_array((size_t)max_len, sizeof(double), "observed attention");
    if (!att || !total) {
        pk_free(att);
        pk_free(total);
        return -1;
    }
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const int n = kh->len;
        for (int j = 0; j < n; j++) total[j] = 0;
        for (int row0 = 0; row0 < v->n_q; row0 += ROW_BLOCK) {
            int rows = v->n_q - row0 < ROW_BLOCK ? v->n_q - row0 : ROW_BLOCK;
            pk_query_attention(v, h, row0, rows, att);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < n; j++) total[j] += att[(size_t)r * (size_t)n + (size_t)j];
        }
        for (int j = 0; j < n; j++) {
            int seen_by = v->q_pos0 + v->n_q - kh->pos[j];
            if (seen_by > v->n_q) seen_by = v->n_q;
            scores[h][j] = seen_by > 0 ? (float)(total[j] / seen_by) : 0.f;
        }
    }
    pk_free(att);
    pk_free(total);
    return 0;
}

static const pk_press_ops observed_ops = {.score = observed_score};

int pk_build_observed_attention(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", NULL};
    double ratio;
    if (pk_press_scorer_spec(spec, keys, &ratio)) return -1;
    return pk_press_new("observed_attention", &observed_ops, ratio, 0, out);
}
