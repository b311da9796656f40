/* expected_attention: score an entry by the attention that *future* queries
 * are expected to pay it (Devoto et al., 2025). The future queries are modelled
 * as a Gaussian with the mean mu and covariance S of the context's queries
 * (sinks excluded); for a key k the expected logit is k.mu/sqrt(d) +
 * k'Sk/(2d). Scores are the softmax of that over the entries, times ||v_j||
 * (what the entry would contribute); the first `sink` positions always stay.
 * GPT-2 has no rotary embedding, so no rotation of mu and S is needed. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>

typedef struct {
    int n_sink;
} expected_params;

static int expected_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    const expected_params *ep = p->params;
    const int first = ep->n_sink < v->n_q ? ep->n_sink : 0; /* too short to drop the sinks */
    const size_t max_len = (size_t)pk_kv_max_len(v->kv, v->layer);
    double *logit = pk_malloc_array(max_len ? max_len : 1, sizeof *logit, "expected attention logits");
    double *value_sq = pk_malloc_array(max_len ? max_len : 1, sizeof *value_sq, "expected attention logits");
    int rc = logit && value_sq ? 0 : -1;
    for (int h = 0; rc == 0 && h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        if ((rc = pk_press_expected_logits(v, h, first, logit, value_sq))) break;
        double max = -INFINITY, sum = 0;
        for (int j = 0; j < kh->len; j++) {
            if (kh->pos[j] < ep->n_sink) continue;
            scores[h][j] = (float)logit[j];
            max = logit[j] > max ? logit[j] : max;
        }
        for (int j = 0; j < kh->len; j++)
            if (kh->pos[j] >= ep->n_sink) sum += exp(scores[h][j] - max);
        for (int j = 0; j < kh->len; j++)
            scores[h][j] = kh->pos[j] < ep->n_sink ? INFINITY
                                                   : (float)(exp(scores[h][j] - max) / sum * sqrt(value_sq[j]));
    }
    pk_free(logit);
    pk_free(value_sq);
    return rc;
}

static const pk_press_ops expected_ops = {.score = expected_score};

int pk_build_expected_attention(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "sink", NULL};
    double ratio;
    int n_sink;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_spec_int(spec, "sink", 4, 0, 1 << 20, &n_sink)) return -1;
    if (pk_press_new("expected_attention", &expected_ops, ratio, sizeof(expected_params), out)) return -1;
    ((expected_params *)(*out)->params)->n_sink = n_sink;
    (*out)->caps = PK_PRESS_MEASURED;
    return 0;
}
