/* knorm: keys with a small L2 norm draw the most attention (Devoto et al.,
 * 2024), so an entry's score is -||k_j||. Needs nothing but the keys. */
#include "press/press.h"
#include "press/spec.h"

static int knorm_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    for (int h = 0; h < v->cfg->n_head; h++) {
        if (pk_press_key_norms(v, h, scores[h])) return -1;
        for (int j = 0; j < pk_press_head(v, h)->len; j++) scores[h][j] = -scores[h][j];
    }
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
    (*out)->caps = PK_PRESS_QUERY_FREE | PK_PRESS_MEASURED;
    return 0;
}
