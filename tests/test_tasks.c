/* Tests for seeded needle-task mixes (src/eval/tasks.c pk_task_mix_make, and
 * the retrieval mix of src/eval/retrieval.c): a five-task mix worked by hand,
 * slot by slot; every length slot used once when the stride is coprime with
 * the count; the task of a mix of one; and the mix retrieval accuracy runs
 * on. Run from the repository root. */
#include "check.h"
#include "eval/retrieval.h"
#include "eval/tasks.h"

#include <string.h>

#define MODEL "models/pikv-ref-14m"

static pk_haystack haystack;

/* 1 when two tasks hold the same tokens, answer and needle. */
static int same_task(const pk_task *a, const pk_task *b)
{
    return a->n_context == b->n_context && a->n_question == b->n_question &&
           memcmp(a->context, b->context, (size_t)a->n_context * sizeof *a->context) == 0 &&
           memcmp(a->question, b->question, (size_t)a->n_question * sizeof *a->question) == 0 &&
           strcmp(a->answer, b->answer) == 0 && a->needle_start == b->needle_start && a->needle_len == b->needle_len;
}

/* Task i of a mix against pk_task_make with the parameters worked out by hand. */
static void expect_task(const pk_task_mix *mix, int i, pk_task_kind kind, int needles, int tokens, double depth)
{
    pk_task got, want;
    const int rc_got = pk_task_mix_make(&haystack, mix, i, &got);
    const int rc_want = pk_task_make(&haystack, kind, needles, tokens, depth, mix->seed + (uint64_t)i, &want);
    CHECK(rc_got == 0 && rc_want == 0, "task %d: %s", i, pikv_last_error());
    if (rc_got || rc_want) return;
    CHECK(got.n_context == tokens, "task %d: %d context tokens, want %d", i, got.n_context, tokens);
    CHECK(same_task(&got, &want), "task %d: not the %s task of %d tokens at depth %g", i,
          kind == PK_TASK_PASSKEY ? "pass key" : "magic number", tokens, depth);
    pk_task_free(&got);
    pk_task_free(&want);
}

/* Five tasks of 1000..2000 tokens, length stride 7, depth stride 3, depths
 * 0.05..0.95: task i takes length slot 7i mod 5 of 0..4 (1000 + 250 per slot)
 * and depth slot 3i mod 5 (0.05 + 0.9 * slot / 4). */
static void check_hand_worked_mix(void)
{
    const pk_task_mix mix = {.n_tasks = 5, .min_tokens = 1000, .max_tokens = 2000, .length_stride = 7,
                             .min_depth = 0.05, .depth_span = 0.9, .depth_stride = 3, .lone_depth = 0.5, .seed = 11};
    expect_task(&mix, 0, PK_TASK_PASSKEY, 1, 1000, 0.05 + 0.9 * (0 / 4.0));  /* slots 0, 0 */
    expect_task(&mix, 1, PK_TASK_MAGIC, 1, 1500, 0.05 + 0.9 * (3 / 4.0));    /* slots 2, 3 */
    expect_task(&mix, 2, PK_TASK_MAGIC, 2, 2000, 0.05 + 0.9 * (1 / 4.0));    /* slots 4, 1 */
    expect_task(&mix, 3, PK_TASK_MAGIC, 3, 1250, 0.05 + 0.9 * (4 / 4.0));    /* slots 1, 4 */
    expect_task(&mix, 4, PK_TASK_MAGIC, 4, 1750, 0.05 + 0.9 * (2 / 4.0));    /* slots 3, 2 */
}

/* Ten tasks with stride 7 (coprime with 10): each of the ten evenly spaced
 * lengths 1000 + 1000 * k / 9 once; kinds cycle with period 5. */
static void check_every_slot_once(void)
{
    const pk_task_mix mix = {.n_tasks = 10, .min_tokens = 1000, .max_tokens = 2000, .length_stride = 7,
                             .min_depth = 0.05, .depth_span = 0.9, .depth_stride = 3, .lone_depth = 0.5, .seed = 3};
    int seen[10] = {0};
    for (int i = 0; i < mix.n_tasks; i++) {
        pk_task t;
        if (pk_task_mix_make(&haystack, &mix, i, &t)) {
            CHECK(0, "task %d: %s", i, pikv_last_error());
            continue;
        }
        for (int k = 0; k < 10; k++)
            if (t.n_context == 1000 + 1000 * k / 9) seen[k]++;
        pk_task_free(&t);
    }
    for (int k = 0; k < 10; k++) CHECK(seen[k] == 1, "length slot %d used %d times, want once", k, seen[k]);
}

/* A mix of one: the shortest length and the lone depth. */
static void check_lone_task(void)
{
    const pk_task_mix mix = {.n_tasks = 1, .min_tokens = 800, .max_tokens = 1600, .length_stride = 7,
                             .min_depth = 0.05, .depth_span = 0.6, .depth_stride = 3, .lone_depth = 0.3, .seed = 5};
    expect_task(&mix, 0, PK_TASK_PASSKEY, 1, 800, 0.3);
}

/* pk_retrieval_task is the mix of strides 7 and 3, depths 0.05..0.95, and the
 * middle for a single task. */
static void check_retrieval_mix(void)
{
    const pk_retrieval_config rc = {.n_tasks = 5, .min_tokens = 1000, .max_tokens = 2000, .seed = 11};
    const pk_task_mix mix = {.n_tasks = 5, .min_tokens = 1000, .max_tokens = 2000, .length_stride = 7,
                             .min_depth = 0.05, .depth_span = 0.9, .depth_stride = 3, .lone_depth = 0.5, .seed = 11};
    for (int i = 0; i < rc.n_tasks; i++) {
        pk_task a, b;
        if (pk_retrieval_task(&haystack, &rc, i, &a) || pk_task_mix_make(&haystack, &mix, i, &b)) {
            CHECK(0, "retrieval task %d: %s", i, pikv_last_error());
            continue;
        }
        CHECK(same_task(&a, &b), "retrieval task %d differs from the mix's", i);
        pk_task_free(&a);
        pk_task_free(&b);
    }
    const pk_retrieval_config one = {.n_tasks = 1, .min_tokens = 1200, .max_tokens = 2000, .seed = 2};
    pk_task a, b;
    if (pk_retrieval_task(&haystack, &one, 0, &a) ||
        pk_task_make(&haystack, PK_TASK_PASSKEY, 1, 1200, 0.5, 2, &b)) {
        CHECK(0, "single retrieval task: %s", pikv_last_error());
        return;
    }
    CHECK(same_task(&a, &b), "a single retrieval task: a pass key half way into the shortest context");
    pk_task_free(&a);
    pk_task_free(&b);
}

int main(void)
{
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    if (!tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        fprintf(stderr, "test_tasks: %s\n", pikv_last_error());
        return 1;
    }
    check_hand_worked_mix();
    check_every_slot_once();
    check_lone_task();
    check_retrieval_mix();
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    return check_done("test_tasks");
}
