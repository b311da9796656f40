#include "eval/quality.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

/* log(sum(exp(x))) in double, shifted by the maximum so that it cannot overflow. */
static double log_sum_exp(const float *x, int n)
{
    double max = x[0], sum = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    for (int i = 0; i < n; i++) sum += exp(x[i] - max);
    return max + log(sum);
}

/* Index of the largest value; the first one wins ties, as in greedy decoding. */
static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Score each position in double precision from log-softmaxes, so that identical
 * logits give a KL of exactly 0. */
void pk_next_token_compare(const float *ref_logits, const float *logits, const int32_t *targets, int n, int vocab,
                           pk_next_token_stats *acc)
{
    for (int i = 0; i < n; i++) {
        const float *p = ref_logits + (size_t)i * vocab, *q = logits + (size_t)i * vocab;
        const double lse_p = log_sum_exp(p, vocab), lse_q = log_sum_exp(q, vocab);
        double kl = 0;
        for (int v = 0; v < vocab; v++) {
            const double log_p = p[v] - lse_p, log_q = q[v] - lse_q;
            kl += exp(log_p) * (log_p - log_q);
        }
        acc->nll_sum += lse_q - q[targets[i]];
        acc->kl_sum += kl;
        acc->top1_same += argmax(p, vocab) == argmax(q, vocab);
        acc->n++;
    }
}

/* Perplexity, mean KL and top-1 agreement of the positions seen (NaN for none). */
double pk_stats_ppl(const pk_next_token_stats *acc) { return acc->n ? exp(acc->nll_sum / acc->n) : NAN; }
double pk_stats_kl(const pk_next_token_stats *acc) { return acc->n ? acc->kl_sum / acc->n : NAN; }
double pk_stats_top1(const pk_next_token_stats *acc) { return acc->n ? (double)acc->top1_same / acc->n : NAN; }

/* Same tokens at the same positions, over the longer answer. */
double pk_answer_agreement(const int32_t *ref, int n_ref, const int32_t *ids, int n)
{
    const int longer = n_ref > n ? n_ref : n, shorter = n_ref < n ? n_ref : n;
    if (longer == 0) return 1.0;
    int same = 0;
    for (int i = 0; i < shorter; i++) same += ref[i] == ids[i];
    return (double)same / longer;
}

/* a / b, or NaN when b is 0 (a ratio with nothing to compare against). */
static double ratio_or_nan(double a, double b) { return b != 0 ? a / b : NAN; }

/* Each measure as a fraction of the reference's, oriented so that 1 is all kept. */
pk_quality pk_quality_retained(const pk_quality *q, const pk_quality *ref)
{
    return (pk_quality){
        .retrieval_acc = ratio_or_nan(q->retrieval_acc, ref->retrieval_acc),
        .ppl = ratio_or_nan(ref->ppl, q->ppl),
        .kl = q->kl,
        .top1_agree = ratio_or_nan(q->top1_agree, ref->top1_agree),
        .answer_agree = ratio_or_nan(q->answer_agree, ref->answer_agree),
    };
}

/* Release the reference logits. */
void pk_quality_reference_free(pk_quality_reference *ref)
{
    pk_free(ref->logits);
    memset(ref, 0, sizeof *ref);
}

/* Forwards pk_eval_retrieval's progress to the quality progress callback. */
typedef struct {
    void (*progress)(const char *stage, int done, int total, void *ctx);
    void *ctx;
} progress_relay;

/* Report a finished retrieval task as a quality stage. */
static void relay_retrieval(int done, int total, void *ctx)
{
    const progress_relay *r = ctx;
    r->progress("retrieval task", done, total, r->ctx);
}

/* Where continuation i starts: the continuations are spread evenly over the
 * text (so that they sample different documents) and do not depend on the
 * context length, so that runs at different lengths score the same tokens. */
static int continuation_start(const pk_quality_config *c, int i)
{
    return (int)((long)(i + 1) * c->haystack->n_ids / (c->n_slices + 1));
}

/* Prefill the slice's context with the press, then teacher-force its
 * continuation through the compressed cache, writing the logits of each
 * continuation position ([slice_tokens, vocab]). */
static int continuation_logits(pikv_session *s, pikv_press *press, const int32_t *ids, const pk_quality_config *c,
                               float *last_logits, float *rows)
{
    pikv_session_reset(s);
    if (pikv_prefill(s, ids, c->slice_context, press, last_logits)) return -1;
    return pikv_forward(s, ids + c->slice_context, c->slice_tokens, rows, 1);
}

/* Retrieval first (pk_eval_retrieval), then each continuation slice, scored
 * against the reference logits (or kept as them). */
int pk_quality_measure(pikv_session *s, pikv_press *press, const pk_quality_config *c, pk_quality_reference *ref,
                       void (*progress)(const char *stage, int done, int total, void *ctx), void *ctx,
                       pk_quality *out)
{
    memset(out, 0, sizeof *out);
    const pikv_config *cfg = pikv_model_config(pikv_session_model(s));
    const int vocab = cfg->vocab_size, n_rows = c->n_slices * c->slice_tokens;
    if (c->n_slices < 1 || c->slice_context < 1 || c->slice_tokens < 1)
        return pk_fail("quality: %d slices of %d + %d tokens (each at least 1)", c->n_slices, c->slice_context,
                       c->slice_tokens);
    if (c->slice_context + c->slice_tokens > cfg->n_positions)
        return pk_fail("quality: a slice of %d + %d tokens exceeds the model's %d positions", c->slice_context,
                       c->slice_tokens, cfg->n_positions);
    if (continuation_start(c, 0) < c->slice_context ||
        continuation_start(c, c->n_slices - 1) + c->slice_tokens + 1 > c->haystack->n_ids)
        return pk_fail("quality: the haystack's %d tokens cannot hold %d slices of %d + %d tokens",
                       c->haystack->n_ids, c->n_slices, c->slice_context, c->slice_tokens + 1);
    if (ref->logits && (ref->n_rows != n_rows || ref->vocab != vocab))
        return pk_fail("quality: the reference holds %d x %d logits, this run needs %d x %d", ref->n_rows,
                       ref->vocab, n_rows, vocab);

    pk_retrieval_config rc = {.n_tasks = c->n_tasks, .min_tokens = c->task_min_tokens,
                              .max_tokens = c->task_max_tokens, .query_aware = c->query_aware, .seed = c->seed};
    pk_retrieval_result rr;
    progress_relay relay = {progress, ctx};
    if (pk_eval_retrieval(s, press, c->haystack, &rc, progress ? relay_retrieval : NULL, &relay, &rr)) return -1;
    out->retrieval_acc = rr.accuracy;

    const int making_reference = ref->logits == NULL;
    float *last = pk_malloc_array((size_t)vocab, sizeof *last, "logits");
    float *rows = making_reference ? pk_malloc_array((size_t)n_rows * vocab, sizeof *rows, "reference logits")
                                   : pk_malloc_array((size_t)c->slice_tokens * vocab, sizeof *rows, "logits");
    pk_next_token_stats acc = {0};
    int rc_status = -1;
    if (!last || !rows) goto done;
    for (int i = 0; i < c->n_slices; i++) {
        const int32_t *ids = c->haystack->ids + continuation_start(c, i) - c->slice_context;
        const float *ref_rows = making_reference ? rows + (size_t)i * c->slice_tokens * vocab
                                                 : ref->logits + (size_t)i * c->slice_tokens * vocab;
        float *own = making_reference ? rows + (size_t)i * c->slice_tokens * vocab : rows;
        if (continuation_logits(s, press, ids, c, last, own)) goto done;
        pk_next_token_compare(ref_rows, own, ids + c->slice_context + 1, c->slice_tokens, vocab, &acc);
        if (progress) progress("perplexity slice", i + 1, c->n_slices, ctx);
    }
    out->ppl = pk_stats_ppl(&acc);
    out->kl = pk_stats_kl(&acc);
    out->top1_agree = pk_stats_top1(&acc);
    if (making_reference) {
        *ref = (pk_quality_reference){.logits = rows, .n_rows = n_rows, .vocab = vocab};
        rows = NULL;
    }
    rc_status = 0;
done:
    pk_free(last);
    pk_free(rows);
    return rc_status;
}
