/* The comparison experiment behind `pikv compare`, PiKVpress's comparison
 * measured: several methods (presses), No Compression among them as the baseline, measured on
 * the same inputs in one run: KV bytes held after compression; prefill,
 * compression and decode time over repetitions in rotated order (medians with
 * their spread); speed; and quality against the baseline (eval/quality.h).
 * The detailed run adds sweeps over the compression ratio, the number of
 * experts, the context length and the KV cache's storage type. Report
 * writers are in bench/report.h. */
#ifndef PIKV_BENCH_COMPARE_H
#define PIKV_BENCH_COMPARE_H

#include "bench/noise.h"
#include "bench/stats.h"
#include "engine/device.h"
#include "eval/quality.h"

#include <stddef.h>

enum {
    PK_COMPARE_MAX_METHODS = 16,
    PK_COMPARE_SPEC_MAX = 512,
    PK_COMPARE_SLICE_TOKENS = 64,   /* continuation tokens per perplexity slice */
    PK_COMPARE_RETRIEVAL_ROOM = 48  /* question + answer room of a retrieval task */
};

/* The tunables a method's spec template may use. */
typedef struct {
    double ratio;       /* {r} */
    int experts;        /* {e} */
    int top_k;          /* {k} */
    double eplb_share;  /* {s} */
} pk_method_params;

/* A method to compare: a display name and a press spec template, in which
 * {r}, {e}, {k} and {s} stand for the parameters above (a spec without them
 * is used as written, and stays fixed in the sweeps). */
typedef struct {
    char name[64];
    char spec[PK_COMPARE_SPEC_MAX];
} pk_method;

/* The three methods of PiKVpress's comparison: No Compression (`none`), Duo Attention
 * (`duo:ratio={r}`) and EPLB + Duo Attention
 * (`eplb_duo:ratio={r},experts={e},top_k={k},eplb_share={s}`). Returns 3. */
int pk_methods_default(pk_method *out);

/* Parse a method list: items separated by ';' (press specs contain commas),
 * each SPEC or NAME=SPEC (NAME being text before the first '=' that holds none
 * of ":([{,"). Unnamed methods get the names PiKVpress's comparison gives
 * none, duo and eplb_duo; others their spec, or their press name when the spec has
 * placeholders. */
int pk_methods_parse(const char *text, pk_method *out, int cap, int *n);

/* Put the baseline (the first method whose press is `none`) first, adding a
 * "No Compression" method when there is none. */
int pk_methods_with_baseline(pk_method *methods, int *n, int cap);

/* Write a template with its placeholders replaced (the ratio with %g). */
int pk_method_expand(const char *spec_template, const pk_method_params *p, char *out, size_t cap);
/* 1 when the template uses the placeholder {key}. */
int pk_method_uses(const char *spec_template, char key);

/* The scenario presets of PiKVpress's comparison. */
typedef struct {
    const char *name;
    double ratio;
    int experts;
    int context_tokens;
} pk_scenario;

/* long-doc-qa (0.6, 6 experts, 4000 tokens), chat (0.4, 4, 1000), content
 * (0.5, 4, 2000); NULL for another name. `names` (may be NULL) gets "a|b|c". */
const pk_scenario *pk_scenario_find(const char *name, const char **names);

/* The context length to use: `wanted`, capped so that the context plus `room`
 * (question and answer tokens) fits in n_positions. */
int pk_context_cap(int wanted, int n_positions, int room);

/* Relative improvement of a method over a reference, in percent: memory
 * reduction = (1 - bytes / ref_bytes) * 100, speed improvement =
 * (tok_s / ref_tok_s - 1) * 100 (NaN when a reference value is 0). */
typedef struct {
    double memory_reduction_pct, speed_improvement_pct;
} pk_improvement;
pk_improvement pk_improvement_of(double ref_bytes, double ref_tok_s, double bytes, double tok_s);

/* Recommendation: among candidates that reduce the KV cache (kv_reduction >
 * 0) and keep at least min_retained of the baseline's quality, the one with the
 * largest reduction (ties: more quality retained, then the first). Returns its
 * index, or -1 when none qualifies (a NaN retention never does). */
typedef struct {
    double kv_reduction;  /* 1 - kv_bytes / baseline kv_bytes */
    double retained;      /* quality retained, 1 = all */
} pk_candidate;
int pk_recommend(const pk_candidate *c, int n, double min_retained);
#define PK_RECOMMEND_MIN_RETAINED 0.95

/* One measured method at one setting. */
typedef struct {
    int method;                    /* index into the report's methods */
    char spec[PK_COMPARE_SPEC_MAX]; /* the press spec it ran */
    char press[32];                /* the press's name in it (none, duo, ...) */
    int context_tokens;
    int baseline;                  /* row of the no-compression run on the same inputs */
    size_t kv_bytes;               /* KV bytes held after compression */
    size_t kv_bytes_full;          /* ... and before it */
    pikv_kv_type kv_type_k, kv_type_v; /* how the session it ran in stores keys and values */
    pk_summary prefill_s, compression_s, decode_s, total_s, prefill_tok_s, decode_tok_s;
    pk_quality quality, retained;  /* retained: pk_quality_retained against the baseline */
    int32_t *answer_ids;           /* the greedy answer, cut at end-of-text */
    int n_answer_ids;
    char *answer;                  /* ... as text */
    int answer_correct;            /* 1 or 0 on a needle task, -1 when unknown */
    char press_note[192];          /* on a device: how its press ran there ("" on the CPU) */
} pk_compare_row;

typedef enum { PK_SWEEP_RATIO, PK_SWEEP_EXPERTS, PK_SWEEP_CONTEXT, PK_SWEEP_KV_TYPE, PK_SWEEP_COUNT } pk_sweep;
extern const char *const pk_sweep_names[PK_SWEEP_COUNT]; /* "ratio", "experts", "context", "kv_type" */

/* A point of a detailed sweep: method row at x (ratio, experts, tokens, or
 * for the KV-type sweep the bits a stored value takes, K and V averaged:
 * f32 32, f16 16, q8_0 8.5, q4_0 4.5). The KV-type sweep runs every method at
 * the main ratio on the main inputs in a session of each type (f32, f16,
 * q8_0, q4_0 and the main setting); its quality and KV reduction are measured
 * against No Compression in an f32 cache on those inputs. */
typedef struct {
    pk_sweep sweep;
    double x;
    int method, row;
} pk_sweep_point;

typedef struct {
    const pk_haystack *haystack;  /* needle tasks, perplexity slices, and the tokenizer */
    const char *model_dir;
    pikv_session *session;
    const char *model_name, *machine;
    /* the main inputs: a context and a question (text shown in the report) */
    const int32_t *context;
    int n_context;
    const int32_t *question;
    int n_question;
    const char *question_text;
    const char *context_source;  /* where the context comes from, for the report */
    const pk_task *task;          /* the needle task they come from, or NULL */
    const pk_method *methods;     /* [0] is the baseline (pk_methods_with_baseline) */
    int n_methods;
    pk_method_params params;
    int max_new_tokens, reps, n_tasks, query_aware, detailed;
    uint64_t seed;
    /* on a device: also the capacity of this many KV bytes for each method
     * (sequences of the main context, each decoding max_new_tokens); 0: none */
    size_t kv_budget;
    /* a one-line status while it runs (may be NULL); NULL line = finished */
    void (*progress)(const char *line, void *ctx);
    void *progress_ctx;
} pk_compare_config;

typedef struct {
    char model[256], machine[320], context_source[320];
    char device[16];         /* where the sessions ran: "cpu" or "cuda" */
    char *question;
    int threads, context_tokens, question_tokens, max_new_tokens, reps, query_aware, detailed;
    /* the main inputs' quality measurement (pk_compare_quality_config) */
    int n_tasks, task_min_tokens, task_max_tokens, n_slices, slice_context, slice_tokens;
    pk_method_params params;
    pk_method methods[PK_COMPARE_MAX_METHODS];
    int n_methods;
    int main_rows[PK_COMPARE_MAX_METHODS];  /* each method's row at the main settings */
    pk_compare_row *rows;
    int n_rows;
    pk_sweep_point *points;  /* --detailed: sorted by sweep, method, x */
    int n_points;
    int f32_row, f16_row;    /* --detailed: No Compression in an f32 and in an f16 cache on the main inputs; else -1 */
    pk_machine_load load;    /* measured by the caller around the run; cores 0 = not measured */
    pk_device_capacity capacity[PK_COMPARE_MAX_METHODS]; /* each method's, at its main row; n_capacity 0: none */
    int n_capacity;
} pk_compare_report;

/* The needle task a context of that length is built from when no context
 * file is given: a pass key at half depth (eval/tasks.h). */
int pk_compare_needle_task(const pk_haystack *h, int context_tokens, uint64_t seed, pk_task *out);

/* Run the experiment. On failure the error names the method at fault. */
int pk_compare_run(const pk_compare_config *c, pk_compare_report *out);
void pk_compare_report_free(pk_compare_report *r);

/* The relative improvements the report shows: every main method against the
 * baseline, and EPLB + Duo against Duo when both are there. */
typedef struct {
    int row, reference;
    pk_improvement gain;
} pk_compare_gain;
int pk_compare_gains(const pk_compare_report *r, pk_compare_gain *out, int cap);

/* The fraction of its baseline's KV bytes a row saves: 1 - kv_bytes / baseline's. */
double pk_compare_kv_reduction(const pk_compare_report *r, int row);

/* A row's KV bytes over another's (the KV-type sweep's "vs f32 cache" and
 * "vs f16 cache": against report.f32_row and f16_row); NaN when either row is
 * -1 or holds nothing. */
double pk_compare_kv_fraction(const pk_compare_report *r, int row, int of_row);

/* A row's KV type as text: "q8_0", or "K/V" ("q8_0/f16") when they differ. */
void pk_compare_kv_type_text(const pk_compare_row *w, char *out, size_t cap);

/* The quality a row keeps, as the recommendation judges it: the lower of
 * retrieval accuracy retained and perplexity retained (where one of them is
 * undefined -- a baseline that answers no needle task -- the other decides). */
double pk_compare_retained(const pk_compare_report *r, int row);

/* The recommended row, or -1: pk_recommend over every row with
 * pk_compare_retained as the quality measure. Each row's KV reduction is
 * against its own baseline, so a KV-type sweep row's counts the storage type
 * too (against No Compression in f32): press and type are chosen together. */
int pk_compare_recommend(const pk_compare_report *r);

/* Why nothing smaller was recommended: the row with the least KV reduction of
 * those that save more than row `best` (all of which fell below the quality
 * bar), or -1 when there is none. */
int pk_compare_next_rejected(const pk_compare_report *r, int best);

/* The quality measurement for a context length: n_tasks retrieval tasks of
 * half to all of it (at most what fits with a question and answer), and
 * 2 + n_tasks / 25 perplexity slices of it (less the continuation, when it
 * would not fit) + PK_COMPARE_SLICE_TOKENS tokens. */
pk_quality_config pk_compare_quality_config(const pk_haystack *h, int n_positions, int context_tokens, int n_tasks,
                                            int query_aware, uint64_t seed);

#endif
