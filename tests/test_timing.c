/* Tests for the rotated timing loop (src/bench/timing.c) and the JSON of
 * measurements (src/bench/json.c): the order methods run in, which sample
 * lands in which summary, a failing run stopping the loop with its error,
 * bad sizes, and both JSON layouts of a summary with undefined values as
 * null. Timing here is of made-up figures: nothing is measured. */
#include "bench/json.h"
#include "bench/timing.h"
#include "check.h"
#include "pikv.h"
#include "util/error.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

enum { METHODS = 3, REPS = 4, CALLS = METHODS * REPS };

/* A fake method runner: records the order of calls and returns figures that
 * say who made them (measure 0: 10 * method + rep, measure 1: its negative). */
typedef struct {
    int order[CALLS], n_calls;
    int reps_done[REPS], n_reps_done;
    int fail_at;  /* call index that fails, or -1 */
} recorder;

static int fake_run(int method, int rep, double *measure, void *ctx)
{
    recorder *r = ctx;
    if (r->n_calls == r->fail_at) return pk_fail("method %d failed in repetition %d", method, rep);
    r->order[r->n_calls++] = method;
    measure[0] = 10 * method + rep;
    measure[1] = -(10 * method + rep);
    return 0;
}

static void note_repetition(int rep, void *ctx)
{
    recorder *r = ctx;
    r->reps_done[r->n_reps_done++] = rep;
}

/* Repetition r runs methods r, r+1, ... (mod 3); each summary holds exactly
 * its method's four samples: median of 10m + {0,1,2,3} is 10m + 1.5. */
static void check_rotation_and_summaries(void)
{
    recorder rec = {.fail_at = -1};
    const pk_rotated_timing t = {.n_methods = METHODS, .reps = REPS, .n_measures = 2, .run = fake_run,
                                 .repetition_done = note_repetition, .ctx = &rec};
    pk_summary out[METHODS * 2];
    CHECK(pk_time_rotated(&t, out) == 0, "timing: %s", pikv_last_error());
    static const int want_order[CALLS] = {0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2};
    CHECK(rec.n_calls == CALLS && memcmp(rec.order, want_order, sizeof want_order) == 0,
          "calls in rotated order (got %d calls, first of rep 1: %d)", rec.n_calls, rec.order[3]);
    CHECK(rec.n_reps_done == REPS && rec.reps_done[0] == 0 && rec.reps_done[REPS - 1] == REPS - 1,
          "repetition_done after each repetition (%d calls)", rec.n_reps_done);
    for (int m = 0; m < METHODS; m++) {
        const pk_summary *a = &out[m * 2], *b = &out[m * 2 + 1];
        CHECK(a->n == REPS && a->median == 10 * m + 1.5 && a->min == 10 * m && a->max == 10 * m + 3,
              "method %d measure 0: median %g (%g..%g), want %g (%d..%d)", m, a->median, a->min, a->max,
              10 * m + 1.5, 10 * m, 10 * m + 3);
        CHECK(b->median == -(10 * m + 1.5) && b->min == -(10 * m + 3) && b->max == -10 * m,
              "method %d measure 1: median %g (%g..%g)", m, b->median, b->min, b->max);
    }
}

/* The fifth call fails: nothing after it runs and its error stands. */
static void check_failure_stops(void)
{
    recorder rec = {.fail_at = 4};
    const pk_rotated_timing t = {.n_methods = METHODS, .reps = REPS, .n_measures = 2, .run = fake_run, .ctx = &rec};
    pk_summary out[METHODS * 2];
    CHECK(pk_time_rotated(&t, out) == -1, "a failing run fails the timing");
    CHECK(rec.n_calls == 4, "no run after the failure (%d ran)", rec.n_calls);
    CHECK(strstr(pikv_last_error(), "method 2 failed in repetition 1") != NULL, "the run's error stands: %s",
          pikv_last_error());

    const pk_rotated_timing none = {.n_methods = 0, .reps = 1, .n_measures = 1, .run = fake_run, .ctx = &rec};
    CHECK(pk_time_rotated(&none, out) == -1 && strstr(pikv_last_error(), "0 methods"), "no methods: %s",
          pikv_last_error());
}

/* The nested and flat layouts of one summary, and null for NaN. */
static void check_summary_json(void)
{
    const pk_summary s = {.median = 2.5, .min = 1, .max = 4, .n = 3};
    cJSON *o = cJSON_CreateObject();
    pk_json_summary(o, "decode_tok_s", &s, PK_SUMMARY_NESTED);
    pk_json_summary(o, "total_s", &s, PK_SUMMARY_FLAT);
    pk_json_number(o, "undefined", NAN);
    char *text = cJSON_PrintUnformatted(o);
    const char *want = "{\"decode_tok_s\":{\"median\":2.5,\"min\":1,\"max\":4},\"total_s\":2.5,\"total_s_min\":1,"
                       "\"total_s_max\":4,\"undefined\":null}";
    CHECK(text && strcmp(text, want) == 0, "summary JSON: %s\n  want %s", text ? text : "(null)", want);
    cJSON_free(text);
    cJSON_Delete(o);
}

int main(void)
{
    check_rotation_and_summaries();
    check_failure_stops();
    check_summary_json();
    return check_done("test_timing");
}
