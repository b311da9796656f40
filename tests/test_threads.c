/* Presses shared between threads. A press never changes after it is built, so
 * sessions on several threads may share one and each gets the answers it gets
 * alone; a press that keeps per-run state (decoding, moe_router) serves one
 * session at a time, and a second session's prefill with it fails with a
 * message instead of racing; freed before the session, it is forgotten. Built with -fsanitize=thread by `make test-tsan`. */
#include "check.h"
#include "eval/tasks.h"
#include "pikv.h"

#include <pthread.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"
enum { THREADS = 3, ROUNDS = 2, MAX_NEW = 6 };

static pikv_model *model;
static pk_task task;

typedef struct {
    pikv_press *press;
    int32_t answer[ROUNDS][MAX_NEW];
    int n[ROUNDS];
    size_t kv_after[ROUNDS];
    int rc;
    char error[256];
} job;

/* Answer the task's question ROUNDS times in a session of this thread's own. */
static void *answer_task(void *arg)
{
    job *j = arg;
    pikv_session *s = pikv_session_new(model, 1);
    j->rc = s ? 0 : -1;
    for (int r = 0; r < ROUNDS && j->rc == 0; r++) {
        const int32_t *q = task.question;
        pikv_qa_request rq = {.context = task.context, .n_context = task.n_context, .questions = &q,
                              .n_question = &task.n_question, .n_questions = 1, .max_new_tokens = MAX_NEW,
                              .stop_id = -1};
        pikv_qa_result res;
        if ((j->rc = pikv_answer(s, j->press, &rq, &res))) break;
        j->n[r] = res.n_answer[0];
        memcpy(j->answer[r], res.answers[0], (size_t)res.n_answer[0] * sizeof(int32_t));
        j->kv_after[r] = res.kv_bytes_after;
        pikv_qa_result_free(&res);
    }
    if (j->rc) snprintf(j->error, sizeof j->error, "%s", pikv_last_error());
    pikv_session_free(s);
    return NULL;
}

/* THREADS threads share one press: every thread, every round, gets what one
 * thread alone gets. */
static void check_shared(const char *spec)
{
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    CHECK(p != NULL, "%s: %s", spec, pikv_last_error());
    if (!p) return;
    job alone = {.press = p}, jobs[THREADS];
    answer_task(&alone);
    CHECK(alone.rc == 0, "%s alone: %s", spec, alone.error);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (job){.press = p};
        pthread_create(&th[i], NULL, answer_task, &jobs[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    int same = 1;
    for (int i = 0; i < THREADS; i++)
        for (int r = 0; r < ROUNDS; r++)
            same &= jobs[i].rc == 0 && jobs[i].n[r] == alone.n[0] && jobs[i].kv_after[r] == alone.kv_after[0] &&
                    memcmp(jobs[i].answer[r], alone.answer[0], (size_t)alone.n[0] * sizeof(int32_t)) == 0;
    CHECK(same, "%s shared by %d threads: the answers of one thread alone (%s)", spec, THREADS, jobs[0].error);
    pikv_press_free(p);
}

typedef struct {
    pikv_press *press;
    int rc;
    char error[256];
} attempt;

/* One prefill with the press in a new session of this thread. */
static void *try_prefill(void *arg)
{
    attempt *a = arg;
    pikv_session *s = pikv_session_new(model, 1);
    a->rc = s ? pikv_prefill(s, task.context, task.n_context, a->press, NULL) : -1;
    snprintf(a->error, sizeof a->error, "%s", a->rc ? pikv_last_error() : "");
    pikv_session_free(s);
    return NULL;
}

/* A press with per-run state held by one session is refused to a session on
 * another thread, and free again once the holder lets go. */
static void check_held(const char *spec)
{
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session *holder = pikv_session_new(model, 1);
    CHECK(p && holder && pikv_prefill(holder, task.context, task.n_context, p, NULL) == 0, "%s: holder's prefill",
          spec);
    attempt a = {.press = p};
    pthread_t th;
    pthread_create(&th, NULL, try_prefill, &a);
    pthread_join(th, NULL);
    CHECK(a.rc != 0 && strstr(a.error, "in use by another session"), "%s: another thread is refused: %s", spec,
          a.error);
    pikv_session_reset(holder);
    pthread_create(&th, NULL, try_prefill, &a);
    pthread_join(th, NULL);
    CHECK(a.rc == 0, "%s: free after the holder's reset: %s", spec, a.error);
    pikv_session_free(holder);
    pikv_press_free(p);
}

/* A held press freed before its session: the session forgets it (no use of
 * freed memory at its reset or free) and runs on without it. */
static void check_freed_first(const char *spec)
{
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session *s = pikv_session_new(model, 1);
    CHECK(p && s && pikv_prefill(s, task.context, task.n_context, p, NULL) == 0, "%s: prefill", spec);
    pikv_press_free(p);
    const int32_t id = 13;
    CHECK(pikv_forward(s, &id, 1, NULL, 0) == 0, "%s: the session decodes on after its press is freed: %s", spec,
          pikv_last_error());
    pikv_session_reset(s);
    CHECK(pikv_prefill(s, task.context, task.n_context, NULL, NULL) == 0, "%s: and prefills after a reset", spec);
    pikv_session_free(s);
}

int main(void)
{
    model = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    pk_haystack hay;
    if (!model || !tok || pk_haystack_load(&hay, tok, "data/haystack.txt") ||
        pk_task_make(&hay, PK_TASK_PASSKEY, 1, 400, 0.5, 3, &task)) {
        fprintf(stderr, "setup: %s\n", pikv_last_error());
        return 1;
    }
    const char *shared[] = {"snapkv:0.5", "per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/0.6", "duo:0.5",
                            "composed[knorm:0.2,streaming_llm:0.3]", "adakv(expected_attention):0.3"};
    for (size_t i = 0; i < sizeof shared / sizeof *shared; i++) check_shared(shared[i]);
    const char *held[] = {"decoding(knorm):every=4,target=300", "moe_router:ratio=0.3,route=1", "moe_router:0.3",
                          "eplb_duo:0.5"};
    for (size_t i = 0; i < sizeof held / sizeof *held; i++) {
        check_held(held[i]);
        check_freed_first(held[i]);
    }
    pk_task_free(&task);
    pk_haystack_free(&hay);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    return check_done("threads");
}
