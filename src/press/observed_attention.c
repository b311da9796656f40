/* observed_attention: H2O-style heavy hitters (Zhang et al., 2023). An entry's
 * score is the total attention it received from every query of the prefill,
 * divided by the number of queries that could see it, so early entries are not
 * favoured just for having been visible longer. */
#include "press/press.h"
#include "press/spec.h"
#include "util/mem.h"

static int observed_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    const int max_len = pk_kv_max_len(v->kv, v->layer);
    double *total = pk_malloc_array((size_t)(max_len > 0 ? max_len : 1), sizeof(double), "observed attention");
    if (!total) return -1;
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const int n = kh->len;
        if (pk_press_attention_sums(v, h, 0, v->n_q, total)) {
            pk_free(total);
            return -1;
        }
        for (int j = 0; j < n; j++) {
            int seen_by = v->q_pos0 + v->n_q - kh->pos[j];
            if (seen_by > v->n_q) seen_by = v->n_q;
            scores[h][j] = seen_by > 0 ? (float)(total[j] / seen_by) : 0.f;
        }
    }
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
    if (pk_press_new("observed_attention", &observed_ops, ratio, 0, out)) return -1;
    (*out)->caps = PK_PRESS_MEASURED;
    return 0;
}
