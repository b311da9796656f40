/* DuoAttention: the two-tier cache (bytes, ring decoding against a dense
 * masked reference, chunked prefill), equivalences with no press, pattern
 * files, and calibration that finds the heads retrieval needs. */
#include "check.h"
#include "eval/retrieval.h"
#include "engine/session.h"
#include "pikv.h"
#include "eval/duo_calibrate.h"
#include "press/duo_pattern.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>

#define MODEL "models/pikv-ref-14m"

static pikv_model *model;
static pikv_tokenizer *tok;
static pk_haystack haystack;
static char tmp[64];

static pk_task context_of(int n, uint64_t seed)
{
    pk_task t;
    pk_task_make(&haystack, PK_TASK_PASSKEY, 1, n, 0.3, seed, &t);
    return t;
}

/* Retrieval heads hold L entries, streaming heads sink + recent, before and
 * after 500 generated tokens; the bytes match. */
static void check_bytes(void)
{
    const pikv_config *c = pikv_model_config(model);
    pk_task t = context_of(1000, 2);
    pikv_press *p = pikv_press_new("duo:ratio=0.5", model, MODEL);
    CHECK(p != NULL, "duo:0.5 with the shipped pattern: %s", pikv_last_error());
    if (!p) return;
    pikv_session *s = pikv_session_new(model, 2);
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    pikv_prefill(s, t.context, t.n_context, p, logits);
    int streaming = 0, right = 1;
    size_t entries = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&s->fwd.kv, l, h);
            streaming += kh->evict;
            right &= kh->len == (kh->evict ? 64 + 256 : 1000);
            entries += (size_t)kh->cap;
        }
    CHECK(streaming == 18, "half of the 36 heads stream: %d", streaming);
    CHECK(right, "retrieval heads hold 1000 entries, streaming heads 320");
    CHECK(pikv_session_kv_bytes(s) == entries * (2 * 64 * 4 + 4) && entries == 18 * 1000 + 18 * 320,
          "bytes %zu for %zu entries", pikv_session_kv_bytes(s), entries);
    pikv_sampling greedy = {.greedy = 1};
    pikv_generation g;
    CHECK(pikv_generate_from(s, logits, 501, &greedy, -1, &g) == 0, "generate 500: %s", pikv_last_error());
    int bounded = 1;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&s->fwd.kv, l, h);
            if (kh->evict) bounded &= kh->len == 320 && kh->cap == 320;
            else bounded &= kh->len == 1500;
        }
    CHECK(bounded, "after 500 generated tokens streaming heads still hold exactly 320 entries");
    pikv_free(g.ids);
    free(logits);
    pikv_session_free(s);
    pikv_press_free(p);
    pk_task_free(&t);
}

/* Logits of a question after prefilling with `spec` vs with no press. */
static double question_diff(const char *spec, const pk_task *t)
{
    const int V = pikv_model_config(model)->vocab_size;
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session *s = pikv_session_new(model, 2);
    pikv_prefill(s, t->context, t->n_context, NULL, NULL);
    pikv_forward(s, t->question, t->n_question, a, 0);
    pikv_session_reset(s);
    pikv_prefill(s, t->context, t->n_context, p, NULL);
    pikv_forward(s, t->question, t->n_question, b, 0);
    double d = memcmp(a, b, (size_t)V * sizeof(float)) == 0 ? 0 : rel_l2(b, a, V) + 1e-30;
    pikv_session_free(s);
    pikv_press_free(p);
    free(a);
    free(b);
    return d;
}

static void check_equivalences(void)
{
    pk_task t = context_of(300, 3);
    CHECK(question_diff("duo:0", &t) == 0, "ratio 0: logits identical to no press");
    CHECK(question_diff("duo:0.8,sink=64,recent=300", &t) == 0, "sink + recent >= L: identical to no press");
    CHECK(question_diff("duo:0.8,sink=4,recent=32", &t) > 1e-4, "a real window changes the logits");
    pk_task_free(&t);
}

/* Decoding through the ring must give the logits of dense attention over the
 * full cache with everything outside sink + recent masked, across many
 * wrap-arounds of the ring; also with a chunked prefill. */
static void check_ring_against_mask(const char *spec, int mask_from_start, int n_context)
{
    const pikv_config *c = pikv_model_config(model);
    const int V = c->vocab_size, steps = 90;
    pk_task t = context_of(120, 4);
    const int n = n_context < t.n_context ? n_context : t.n_context;
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session *ring = pikv_session_new(model, 2), *dense = pikv_session_new(model, 2);
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    pikv_prefill(ring, t.context, n, p, a);
    /* The reference: the same heads, streaming as a mask only (from the first
     * token for a chunked prefill, after a full prefill otherwise). */
    if (!mask_from_start) pikv_prefill(dense, t.context, n, NULL, b);
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_kv_head *rh = pk_kv_head_at(&ring->fwd.kv, l, h);
            if (rh->evict) pk_kv_make_streaming(&dense->fwd.kv, l, h, rh->sink, rh->recent, 0);
        }
    if (mask_from_start) pikv_prefill(dense, t.context, n, NULL, b);
    double worst = rel_l2(a, b, V);
    int32_t id = 0;
    for (int i = 0; i < steps; i++) {
        id = (int32_t)((i * 131 + 7) % V);
        pikv_forward(ring, &id, 1, a, 0);
        pikv_forward(dense, &id, 1, b, 0);
        worst = fmax(worst, rel_l2(a, b, V));
    }
    CHECK(worst < 1e-5, "%s: ring vs dense masked attention over %d steps: %.3g", spec, steps, worst);
    int bounded = 1;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_kv_head *rh = pk_kv_head_at(&ring->fwd.kv, l, h);
            if (rh->evict) bounded &= rh->len == rh->sink + rh->recent;
        }
    CHECK(bounded, "%s: ring heads stay at sink + recent", spec);
    free(a);
    free(b);
    pikv_session_free(ring);
    pikv_session_free(dense);
    pikv_press_free(p);
    pk_task_free(&t);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void expect_pattern_error(const char *label, const char *tsv, const char *config, const char *needle)
{
    char dir[128], spec[200];
    snprintf(dir, sizeof dir, "%s/%s", tmp, label);
    mkdir(dir, 0700);
    write_file(dir, "full_attention_heads.tsv", tsv);
    if (config) write_file(dir, "config.json", config);
    snprintf(spec, sizeof spec, "duo:0.5,pattern=%s", dir);
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    CHECK(!p && strstr(pikv_last_error(), needle), "%s: expected '%s', got %s", label, needle,
          p ? "a press" : pikv_last_error());
    pikv_press_free(p);
}

static void check_pattern_files(void)
{
    pk_duo_pattern a, b;
    CHECK(pk_duo_pattern_load(MODEL "/duo", &a) == 0, "shipped pattern: %s", pikv_last_error());
    char dir[128];
    snprintf(dir, sizeof dir, "%s/roundtrip", tmp);
    CHECK(pk_duo_pattern_save(dir, &a) == 0 && pk_duo_pattern_load(dir, &b) == 0, "round trip: %s",
          pikv_last_error());
    CHECK(a.n_layer == b.n_layer && a.n_head == b.n_head && a.sink == b.sink && a.recent == b.recent &&
              memcmp(a.alpha, b.alpha, (size_t)a.n_layer * a.n_head * sizeof(float)) == 0,
          "a saved pattern loads back identical");
    pk_duo_pattern_free(&a);
    pk_duo_pattern_free(&b);

    /* Gate values are clipped to [0, 1]; ties stream in layer, then head order. */
    pk_duo_pattern p;
    const char *tsv = "0.5\t-1\t2\n0.5 0.5 0.1\n";
    CHECK(pk_duo_pattern_parse(tsv, strlen(tsv), "t.tsv", &p) == 0 && p.n_layer == 2 && p.n_head == 3 &&
              p.alpha[1] == 0.f && p.alpha[2] == 1.f,
          "parse and clip");
    unsigned char streaming[6];
    pk_duo_pattern_select(&p, 0.5, streaming);
    CHECK(streaming[1] && streaming[5] && streaming[0] && !streaming[3] && !streaming[2],
          "lowest alphas stream, ties by layer then head");
    pk_duo_pattern_free(&p);

    const char *config = "{\"sink_size\": 64, \"recent_size\": 256}";
    char six[512] = "", five_rows[512] = "";
    for (int l = 0; l < 6; l++) strcat(six, "1\t1\t1\t1\t1\t1\n");
    for (int l = 0; l < 5; l++) strcat(five_rows, "1\t1\t1\t1\t1\t1\n");
    expect_pattern_error("rows", five_rows, config, "5 layers x 6 heads, the model 6 x 6");
    expect_pattern_error("ragged", "1\t1\t1\t1\t1\t1\n1\t1\n", config, "row 2 has 2 values, row 1 has 6");
    expect_pattern_error("nan", "1\t1\t1\t1\t1\tx\n", config, "row 1, column 6: 'x' is not a number");
    expect_pattern_error("noconfig", six, NULL, "config.json: missing");
    expect_pattern_error("badconfig", six, "{\"sink_size\": -3, \"recent_size\": 256}", "\"sink_size\" must be");
    expect_pattern_error("empty", "\n\n", config, "no rows");
    pikv_press *none_for_model = pikv_press_new("duo:0.5", model, "/nonexistent");
    CHECK(!none_for_model && strstr(pikv_last_error(), "pikv duo-calibrate"),
          "no pattern: the error suggests the calibration command: %s", pikv_last_error());
}

/* Calibrate quickly, then retrieval with half the heads streaming: the
 * calibrated half keeps accuracy, streaming the other half destroys it. */
static void check_calibration(int n_tasks)
{
    pikv_session *s = pikv_session_new(model, 2);
    pk_duo_calibration cal = {.samples = 5, .min_tokens = 1000, .max_tokens = 1600, .sink = 64, .recent = 256,
                              .seed = 1000};
    pk_duo_pattern pattern;
    CHECK(pk_duo_calibrate(s, &haystack, &cal, NULL, NULL, &pattern) == 0, "calibrate: %s", pikv_last_error());
    char dir[128], inverse_dir[128], spec[256];
    snprintf(dir, sizeof dir, "%s/calibrated", tmp);
    snprintf(inverse_dir, sizeof inverse_dir, "%s/inverse", tmp);
    pk_duo_pattern_save(dir, &pattern);
    for (int i = 0; i < pattern.n_layer * pattern.n_head; i++) pattern.alpha[i] = 1.f - pattern.alpha[i];
    pk_duo_pattern_save(inverse_dir, &pattern);
    pk_duo_pattern_free(&pattern);

    pk_retrieval_config rc = {.n_tasks = n_tasks, .min_tokens = 1000, .max_tokens = 2000, .seed = 1};
    pk_retrieval_result none, duo, inverse;
    pk_eval_retrieval(s, NULL, &haystack, &rc, NULL, NULL, &none);
    snprintf(spec, sizeof spec, "duo:0.5,pattern=%s", dir);
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pk_eval_retrieval(s, p, &haystack, &rc, NULL, NULL, &duo);
    pikv_press_free(p);
    snprintf(spec, sizeof spec, "duo:0.5,pattern=%s", inverse_dir);
    p = pikv_press_new(spec, model, MODEL);
    pk_eval_retrieval(s, p, &haystack, &rc, NULL, NULL, &inverse);
    pikv_press_free(p);
    printf("retrieval on %d tasks of 1000-2000 tokens: none %.2f, duo:0.5 calibrated %.2f, the other half %.2f\n",
           n_tasks, none.accuracy, duo.accuracy, inverse.accuracy);
    CHECK(duo.accuracy >= 0.9 * none.accuracy, "calibrated duo:0.5 keeps >= 90%% of %.2f: %.2f", none.accuracy,
          duo.accuracy);
    CHECK(inverse.accuracy < 0.5 * none.accuracy, "streaming the retrieval heads instead: %.2f", inverse.accuracy);
    pikv_session_free(s);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/pikv-test-duo-XXXXXX");
    model = pikv_model_load(MODEL);
    tok = pikv_tokenizer_load(MODEL);
    if (!mkdtemp(tmp) || !model || !tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        fprintf(stderr, "setup: %s\n", pikv_last_error());
        return 1;
    }
    check_bytes();
    check_equivalences();
    check_ring_against_mask("duo:0.5,sink=4,recent=24", 0, 120);
    check_ring_against_mask("duo:0.5,sink=4,recent=24,prefill_chunk=16", 1, 120);
    /* A context shorter than the window (the first 20 of the 120 tokens): no
     * chunk fills a ring, decoding does, and the oldest entry after the sinks
     * is the first it overwrites. */
    check_ring_against_mask("duo:0.5,sink=4,recent=24,prefill_chunk=16", 1, 20);
    check_pattern_files();
    /* The sanitizer build runs a smaller retrieval check: it tests memory safety, not accuracy. */
    const char *quick = getenv("PIKV_TEST_QUICK");
    check_calibration(quick && *quick ? 10 : 50);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    return check_done("duo");
}
