#include "eval/retrieval.h"
#include "util/error.h"

#include <string.h>

/* Lengths and depths stepped through at rates 7 and 3; the asked needle
 * between 5 % and 95 % deep (half way in a mix of one task). */
int pk_retrieval_task(const pk_haystack *h, const pk_retrieval_config *c, int i, pk_task *out)
{
    const pk_task_mix mix = {.n_tasks = c->n_tasks, .min_tokens = c->min_tokens, .max_tokens = c->max_tokens,
                             .length_stride = 7, .min_depth = 0.05, .depth_span = 0.9, .depth_stride = 3,
                             .lone_depth = 0.5, .seed = c->seed};
    return pk_task_mix_make(h, &mix, i, out);
}

int pk_eval_retrieval(pikv_session *s, pikv_press *press, const pk_haystack *h, const pk_retrieval_config *c,
                      void (*progress)(int done, int total, void *ctx), void *ctx, pk_retrieval_result *out)
{
    memset(out, 0, sizeof *out);
    if (c->n_tasks < 1) return pk_fail("retrieval: at least one task");
    if (c->min_tokens < 64 || c->max_tokens < c->min_tokens)
        return pk_fail("retrieval: context lengths %d..%d (at least 64, min <= max)", c->min_tokens, c->max_tokens);
    const pikv_config *cfg = pikv_model_config(pikv_session_model(s));
    const double t0 = pikv_now();
    pikv_routing_stats before;
    out->routed = press && pikv_press_routes_queries(press);
    if (out->routed && pikv_press_routing_stats(press, &before, 1)) return -1;
    for (int i = 0; i < c->n_tasks; i++) {
        pk_task task;
        if (pk_retrieval_task(h, c, i, &task)) return -1;
        const int32_t *q = task.question;
        pikv_qa_request rq = {.context = task.context, .n_context = task.n_context, .questions = &q,
                              .n_question = &task.n_question, .n_questions = 1,
                              .max_new_tokens = c->max_new_tokens > 0 ? c->max_new_tokens : 12,
                              .stop_id = cfg->eos_token_id, .query_aware = c->query_aware};
        pikv_qa_result res;
        int rc = pikv_answer(s, press, &rq, &res);
        if (rc == 0) {
            out->n_correct += pk_task_correct(h->tok, &task, res.answers[0], res.n_answer[0]);
            out->kv_kept += res.kv_bytes_before ? (double)res.kv_bytes_after / (double)res.kv_bytes_before : 1.0;
            pikv_qa_result_free(&res);
        }
        pk_task_free(&task);
        if (rc) return -1;
        out->n_tasks++;
        if (progress) progress(i + 1, c->n_tasks, ctx);
    }
    out->accuracy = (double)out->n_correct / out->n_tasks;
    out->kv_kept /= out->n_tasks;
    out->seconds = pikv_now() - t0;
    if (out->routed) pikv_press_routing_stats(press, &out->routing, 0);
    return 0;
}
