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

/* Mean and covariance (divided by the count) of the query rows from `first` on. */
static void query_statistics(const pk_press_view *v, int head, int first, double *mu, double *cov)
{
    const int hd = v->cfg->head_dim, n = v->n_q - first;
    for (int a = 0; a < hd; a++) mu[a] = 0;
    for (int a = 0; a < hd * hd; a++) cov[a] = 0;
    for (int t = first; t < v->n_q; t++) {
        const float *q = v->q + (size_t)t * (size_t)v->q_stride + (size_t)head * (size_t)hd;
        for (int a = 0; a < hd; a++) mu[a] += q[a];
    }
    for (int a = 0; a < hd; a++) mu[a] /= n;
    for (int t = first; t < v->n_q; t++) {
        const float *q = v->q + (size_t)t * (size_t)v->q_stride + (size_t)head * (size_t)hd;
        for (int a = 0; a < hd; a++)
            for (int b = 0; b < hd; b++) cov[a * hd + b] += (q[a] - mu[a]) * (q[b] - mu[b]);
    }
    for (int a = 0; a < hd * hd; a++) cov[a] /= n;
}

static int expected_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    const expected_params *ep = p->params;
    const int hd = v->cfg->head_dim;
    const int first = ep->n_sink < v->n_q ? ep->n_sink : 0; /* too short to drop the sinks */
    double *mu = pk_malloc_array((size_t)hd, sizeof *mu, "expected attention statistics");
    double *cov = pk_malloc_array((size_t)hd * (size_t)hd, sizeof *cov, "expected attention statistics");
    float *scratch = pk_press_alloc_rows(v);
    if (!mu || !cov || !scratch) {
        pk_free(mu);
        pk_free(cov);
        pk_free(scratch);
        return -1;
    }
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const float *keys = pk_press_rows(v, h, 0, scratch);
        query_statistics(v, h, first, mu, cov);
        double max = -INFINITY, sum = 0;
        for (int j = 0; j < kh->len; j++) {
            if (kh->pos[j] < ep->n_sink) continue;
            const float *k = keys + (size_t)j * (size_t)hd;
            double lin = 0, quad = 0;
            for (int a = 0; a < hd; a++) {
                lin += k[a] * mu[a];
                double row = 0;
                for (int b = 0; b < hd; b++) row += cov[a * hd + b] * k[b];
                quad += k[a] * row;
            }
            double logit = lin / sqrt(hd) + quad / (2.0 * hd);
            scores[h][j] = (float)logit;
            max = logit > max ? logit : max;
        }
        for (int j = 0; j < kh->len; j++)
            if (kh->pos[j] >= ep->n_sink) sum += exp(scores[h][j] - max);
        const float *values = pk_press_rows(v, h, 1, scratch); /* the keys are no longer needed */
        for (int j = 0; j < kh->len; j++) {
            if (kh->pos[j] < ep->n_sink) {
                scores[h][j] = INFINITY;
                continue;
            }
            const float *val = values + (size_t)j * (size_t)hd;
            double vnorm = 0;
            for (int a = 0; a < hd; a++) vnorm += (double)val[a] * val[a];
            scores[h][j] = (float)(exp(scores[h][j] - max) / sum * sqrt(vnorm));
        }
    }
    pk_free(mu);
    pk_free(cov);
    pk_free(scratch);
    return 0;
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
    return 0;
}
