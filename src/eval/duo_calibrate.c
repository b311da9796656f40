#include "eval/duo_calibrate.h"
#include "engine/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

/* Squared distance and squared norm, summed over rows of width C. */
static void accumulate_change(const float *ablated, const float *full, size_t n, double *diff, double *norm)
{
    for (size_t i = 0; i < n; i++) {
        double d = (double)ablated[i] - full[i];
        *diff += d * d;
        *norm += (double)full[i] * full[i];
    }
}

/* The probe of a task: its question followed by its answer (" N."), all but
 * the answer's last token, so that the last question token and the answer
 * tokens before the last are the positions that predict the answer. */
static int make_probe(const pikv_tokenizer *tok, const pk_task *t, int32_t **probe, int *n_probe, int *first_row)
{
    char answer[32];
    snprintf(answer, sizeof answer, " %s.", t->answer);
    int32_t *ans;
    size_t n_ans;
    if (pikv_tokenize(tok, answer, strlen(answer), &ans, &n_ans)) return -1;
    *n_probe = t->n_question + (int)n_ans - 1;
    *probe = pk_malloc_array((size_t)*n_probe, sizeof **probe, "calibration probe");
    if (*probe) {
        memcpy(*probe, t->question, (size_t)t->n_question * sizeof **probe);
        memcpy(*probe + t->n_question, ans, (n_ans - 1) * sizeof **probe);
    }
    pk_free(ans);
    *first_row = t->n_question - 1;
    return *probe ? 0 : -1;
}

int pk_duo_calibrate(pikv_session *s, const pk_haystack *h, const pk_duo_calibration *c,
                     void (*progress)(int done, int total, void *ctx), void *ctx, pk_duo_pattern *out)
{
    const pikv_config *cfg = pikv_model_config(pikv_session_model(s));
    const int L = cfg->n_layer, H = cfg->n_head, C = cfg->n_embd;
    memset(out, 0, sizeof *out);
    if (c->samples < 1) return pk_fail("duo calibration: at least one sample");
    if (c->min_tokens <= c->sink + c->recent)
        return pk_fail("duo calibration: contexts of %d tokens fit in the window sink + recent = %d; make them longer",
                       c->min_tokens, c->sink + c->recent);
    double *score = pk_calloc((size_t)L * (size_t)H, sizeof *score, "calibration scores");
    float *full = NULL, *ablated = NULL;
    int32_t *probe = NULL;
    int rc = -1;
    if (!score) return -1;
    /* Kinds cycle pass key, 1..4 magic numbers; the needle sits before the
     * recent window (depth 0.05..0.65) so streaming heads cannot see it. */
    const pk_task_mix mix = {.n_tasks = c->samples, .min_tokens = c->min_tokens, .max_tokens = c->max_tokens,
                             .length_stride = 1, .min_depth = 0.05, .depth_span = 0.6, .depth_stride = 7,
                             .lone_depth = 0.05, .seed = c->seed};
    for (int i = 0; i < c->samples; i++) {
        pk_task t;
        if (pk_task_mix_make(h, &mix, i, &t)) goto done;
        int n_probe, first_row;
        pk_free(probe);
        probe = NULL;
        int ok = make_probe(h->tok, &t, &probe, &n_probe, &first_row) == 0;
        const size_t rows = (size_t)(n_probe - first_row) * (size_t)C;
        pk_free(full);
        pk_free(ablated);
        full = ok ? pk_malloc_array((size_t)n_probe * (size_t)C, sizeof *full, "calibration states") : NULL;
        ablated = ok ? pk_malloc_array((size_t)n_probe * (size_t)C, sizeof *ablated, "calibration states") : NULL;
        ok = ok && full && ablated;
        /* The context once, with full attention; then the probe, unablated. */
        pikv_session_reset(s);
        ok = ok && pikv_forward(s, t.context, t.n_context, NULL, 0) == 0 && pikv_session_mark(s) == 0 &&
             pk_forward_hidden(s, probe, n_probe, full) == 0 && pikv_session_rewind(s) == 0;
        pk_task_free(&t);
        if (!ok) goto done;
        for (int l = 0; l < L; l++)
            for (int hd = 0; hd < H; hd++) {
                /* This head alone sees sink + recent while the probe runs (a mask:
                 * the context's entries stay for the next head). */
                if (pk_session_set_window(s, l, hd, c->sink, c->recent) ||
                    pk_forward_hidden(s, probe, n_probe, ablated) || pikv_session_rewind(s) ||
                    pk_session_set_window(s, l, hd, 0, 0))
                    goto done;
                double diff = 0, norm = 0;
                accumulate_change(ablated + (size_t)first_row * C, full + (size_t)first_row * C, rows, &diff, &norm);
                score[l * H + hd] += norm > 0 ? diff / norm : 0;
            }
        if (progress) progress(i + 1, c->samples, ctx);
    }
    double max = 0;
    for (int i = 0; i < L * H; i++) max = score[i] > max ? score[i] : max;
    if (!(out->alpha = pk_malloc_array((size_t)L * (size_t)H, sizeof *out->alpha, "duo pattern"))) goto done;
    for (int i = 0; i < L * H; i++) out->alpha[i] = max > 0 ? (float)(score[i] / max) : 0.f;
    out->n_layer = L;
    out->n_head = H;
    out->sink = c->sink;
    out->recent = c->recent;
    rc = 0;
done:
    pikv_session_reset(s);
    pk_free(probe);
    pk_free(full);
    pk_free(ablated);
    pk_free(score);
    return rc;
}
