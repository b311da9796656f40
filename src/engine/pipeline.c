/* The context-and-questions pipeline (kvpress's "kv-press-text-generation"):
 * compress a context once, answer each question greedily against it, and
 * rewind the cache to its compressed state between questions.
 *
 * As in kvpress, the prefill's own output is computed with the full cache: when
 * the press has seen everything up to the answer (no question, or query-aware
 * mode), the first answer token comes from the prefill's logits, and only the
 * tokens after it read the compressed cache. */
#include "pikv.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

void pikv_qa_result_free(pikv_qa_result *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_answers && r->answers; i++) pk_free(r->answers[i]);
    pk_free(r->answers);
    pk_free(r->n_answer);
    memset(r, 0, sizeof *r);
}

/* Prefill `ids` into an empty cache with the press, leaving the last
 * position's logits; the first compression's bytes go in the result. */
static int compress_prompt(pikv_session *s, pikv_press *press, const int32_t *ids, int n, float *logits,
                           pikv_qa_result *out)
{
    pikv_session_reset(s);
    double t0 = pikv_now();
    if (pikv_prefill(s, ids, n, press, logits)) return -1;
    double elapsed = pikv_now() - t0;
    pikv_press_stats st;
    pikv_session_press_stats(s, &st);
    out->prefill_s += elapsed - st.compression_s;
    out->compression_s += st.compression_s;
    if (out->kv_bytes_before == 0) {
        out->kv_bytes_before = st.kv_bytes_before ? st.kv_bytes_before : pikv_session_kv_bytes(s);
        out->kv_bytes_after = pikv_session_kv_bytes(s);
    }
    return 0;
}

/* Book one answer (its ids move into the result). */
static void keep_answer(pikv_qa_result *out, int slot, pikv_generation *gen)
{
    out->answers[slot] = gen->ids;
    out->n_answer[slot] = gen->n_ids;
    out->prefill_s += gen->prefill_s;
    out->decode_s += gen->decode_s;
    out->decode_tokens += gen->n_ids > 0 ? gen->n_ids - 1 : 0;
}

int pikv_answer(pikv_session *s, pikv_press *press, const pikv_qa_request *rq, pikv_qa_result *out)
{
    if (!s || !rq || !out) return pk_fail("pikv_answer: session, request or result is NULL");
    if (!rq->context || (rq->n_questions > 0 && (!rq->questions || !rq->n_question)) || rq->n_questions < 0)
        return pk_fail("pikv_answer: the request's context or questions are NULL, or n_questions < 0");
    memset(out, 0, sizeof *out);
    if (rq->n_context <= 0) return pk_fail("pipeline: the context is empty");
    if (rq->query_aware && rq->n_questions == 0) return pk_fail("pipeline: query-aware mode needs a question");
    const int n_positions = pikv_model_config(pikv_session_model(s))->n_positions;
    if (rq->n_context > n_positions || rq->max_new_tokens < 0 || rq->max_new_tokens > n_positions)
        return pk_fail("pipeline: a context of %d tokens and %d new tokens do not fit the model's %d positions",
                       rq->n_context, rq->max_new_tokens, n_positions);
    for (int q = 0; q < rq->n_questions; q++)
        if (rq->n_question[q] <= 0 || rq->n_question[q] > n_positions || !rq->questions[q])
            return pk_fail("pipeline: question %d is empty, NULL or longer than the model's positions", q + 1);
    const pikv_config *c = pikv_model_config(pikv_session_model(s));
    const int slots = rq->n_questions > 0 ? rq->n_questions : 1;
    const pikv_sampling greedy = {.greedy = 1};
    /* A decoding press changes the cache while answering, and a device
     * engine keeps no marks, so then every question starts from a freshly
     * compressed context instead of a rewound one (the same cache either way). */
    const int rewind = !rq->query_aware && !(press && pikv_press_acts_while_generating(press)) &&
                       strcmp(pikv_session_device(s), "cpu") == 0;
    float *logits = pk_malloc_array((size_t)c->vocab_size, sizeof *logits, "logits");
    int32_t *joined = NULL;
    out->answers = pk_calloc((size_t)slots, sizeof *out->answers, "answers");
    out->n_answer = pk_calloc((size_t)slots, sizeof *out->n_answer, "answers");
    if (!logits || !out->answers || !out->n_answer) goto fail;
    out->n_answers = slots;
    pikv_generation gen;

    if (rq->n_questions == 0) {
        if (compress_prompt(s, press, rq->context, rq->n_context, logits, out) ||
            pikv_generate_from(s, logits, rq->max_new_tokens, &greedy, rq->stop_id, &gen))
            goto fail;
        keep_answer(out, 0, &gen);
    } else if (rq->query_aware) {
        for (int q = 0; q < rq->n_questions; q++) {
            int n = rq->n_context + rq->n_question[q];
            pk_free(joined);
            if (!(joined = pk_malloc_array((size_t)n, sizeof *joined, "query-aware prompt"))) goto fail;
            memcpy(joined, rq->context, (size_t)rq->n_context * sizeof *joined);
            memcpy(joined + rq->n_context, rq->questions[q], (size_t)rq->n_question[q] * sizeof *joined);
            if (compress_prompt(s, press, joined, n, logits, out) ||
                pikv_generate_from(s, logits, rq->max_new_tokens, &greedy, rq->stop_id, &gen))
                goto fail;
            keep_answer(out, q, &gen);
        }
    } else {
        for (int q = 0; q < rq->n_questions; q++) {
            if (q == 0 || !rewind) {
                if (compress_prompt(s, press, rq->context, rq->n_context, logits, out)) goto fail;
                if (rewind && pikv_session_mark(s)) goto fail;
            } else if (pikv_session_rewind(s)) {
                goto fail;
            }
            if (pikv_generate(s, rq->questions[q], rq->n_question[q], rq->max_new_tokens, &greedy, rq->stop_id,
                              &gen))
                goto fail;
            keep_answer(out, q, &gen);
        }
    }
    pk_free(joined);
    pk_free(logits);
    return 0;
fail:
    pk_free(joined);
    pk_free(logits);
    pikv_qa_result_free(out);
    return -1;
}
