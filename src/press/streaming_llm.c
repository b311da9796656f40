/* streaming_llm: keep the first `sink` positions (attention sinks) and the most
 * recent ones (Xiao et al., 2023). Scores by position: sinks first, then later
 * positions above earlier ones, so the pruned entries are those right after the
 * sinks. */
#include "press/press.h"
#include "press/spec.h"

#include <math.h>

typedef struct {
    int n_sink;
} streaming_params;

static int streaming_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    const streaming_params *sp = p->params;
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        for (int j = 0; j < kh->len; j++)
            scores[h][j] = kh->pos[j] < sp->n_sink ? INFINITY : (float)kh->pos[j];
    }
    return 0;
}

static const pk_press_ops streaming_ops = {.score = streaming_score};

int pk_build_streaming_llm(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "sink", NULL};
    double ratio;
    int n_sink;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_spec_int(spec, "sink", 4, 0, 1 << 20, &n_sink)) return -1;
    if (pk_press_new("streaming_llm", &streaming_ops, ratio, sizeof(streaming_params), out)) return -1;
    (*out)->caps = PK_PRESS_QUERY_FREE | PK_PRESS_ENTRY_FREE | PK_PRESS_MEASURED;
    ((streaming_params *)(*out)->params)->n_sink = n_sink;
    return 0;
}
