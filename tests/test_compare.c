/* Tests for the comparison experiment (src/bench/compare.c, report.c, svg.c)
 * and its quality metrics (src/eval/quality.c): the relative-improvement
 * arithmetic on the example output of PiKVpress's comparison, perplexity / KL / top-1 on hand-made
 * distributions, no compression against itself on the bundled model, the
 * recommendation rule, method lists, scenario capping, the JSON schema and CSV
 * of a real (small) run, and the SVG plots. Run from the repository root. */
#include "bench/compare.h"
#include "bench/report.h"
#include "bench/svg.h"
#include "check.h"
#include "util/mem.h"
#include "eval/quality.h"
#include "pikv.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"
#define HAYSTACK "data/haystack.txt"

/* Whether two numbers agree within tol. */
static int near(double a, double b, double tol) { return fabs(a - b) <= tol; }

/* The example output of PiKVpress's comparison: 1.23 GB -> 0.87 GB -> 0.65 GB, 12.2 -> 15.2 -> 18.0 tok/s,
 * and the percentages it prints. */
static void test_improvements(void)
{
    pk_improvement duo = pk_improvement_of(1.23, 12.2, 0.87, 15.2);
    CHECK(near(duo.memory_reduction_pct, 29.268, 1e-3), "Duo memory reduction %f, want 29.3", duo.memory_reduction_pct);
    CHECK(near(duo.speed_improvement_pct, 24.590, 1e-3), "Duo speed improvement %f, want 24.6",
          duo.speed_improvement_pct);
    pk_improvement both = pk_improvement_of(1.23, 12.2, 0.65, 18.0);
    CHECK(near(both.memory_reduction_pct, 47.154, 1e-3), "EPLB+Duo memory %f, want 47.2", both.memory_reduction_pct);
    CHECK(near(both.speed_improvement_pct, 47.541, 1e-3), "EPLB+Duo speed %f, want 47.5", both.speed_improvement_pct);
    pk_improvement extra = pk_improvement_of(0.87, 15.2, 0.65, 18.0);
    CHECK(near(extra.memory_reduction_pct, 25.287, 1e-3), "additional memory %f, want 25.3",
          extra.memory_reduction_pct);
    CHECK(near(extra.speed_improvement_pct, 18.421, 1e-3), "additional speed %f, want 18.4",
          extra.speed_improvement_pct);
    pk_improvement slower = pk_improvement_of(100, 10, 100, 8);
    CHECK(slower.memory_reduction_pct == 0 && near(slower.speed_improvement_pct, -20, 1e-12),
          "a slowdown is a negative improvement: %f", slower.speed_improvement_pct);
    pk_improvement undefined = pk_improvement_of(0, 0, 1, 1);
    CHECK(isnan(undefined.memory_reduction_pct) && isnan(undefined.speed_improvement_pct),
          "a zero reference gives NaN");
}

/* The same arithmetic through a hand-made report of PiKVpress's comparison's
 * three methods: every method against the baseline, then EPLB + Duo against
 * Duo. */
static void test_gains_of_report(void)
{
    pk_compare_report r = {0};
    r.n_methods = pk_methods_default(r.methods);
    pk_compare_row rows[3] = {0};
    const double gb[3] = {1.23e9, 0.87e9, 0.65e9}, tok_s[3] = {12.2, 15.2, 18.0};
    const char *press[3] = {"none", "duo", "eplb_duo"};
    for (int i = 0; i < 3; i++) {
        rows[i].method = i;
        rows[i].kv_bytes = (size_t)gb[i];
        rows[i].decode_tok_s.median = tok_s[i];
        snprintf(rows[i].press, sizeof rows[i].press, "%s", press[i]);
        r.main_rows[i] = i;
    }
    r.rows = rows;
    r.n_rows = 3;
    pk_compare_gain g[8];
    const int n = pk_compare_gains(&r, g, 8);
    CHECK(n == 3, "%d gains, want 3 (two against the baseline, EPLB+Duo against Duo)", n);
    if (n == 3) {
        CHECK(g[0].row == 1 && g[0].reference == 0 && near(g[0].gain.memory_reduction_pct, 29.268, 1e-3),
              "Duo vs baseline");
        CHECK(g[1].row == 2 && g[1].reference == 0 && near(g[1].gain.speed_improvement_pct, 47.541, 1e-3),
              "EPLB+Duo vs baseline");
        CHECK(g[2].row == 2 && g[2].reference == 1 && near(g[2].gain.memory_reduction_pct, 25.287, 1e-3) &&
                  near(g[2].gain.speed_improvement_pct, 18.421, 1e-3),
              "EPLB+Duo vs Duo: %f %f", g[2].gain.memory_reduction_pct, g[2].gain.speed_improvement_pct);
    }
    CHECK(near(pk_compare_kv_reduction(&r, 1), 1 - 0.87 / 1.23, 1e-9), "KV reduction of a row");
}

/* Perplexity, KL and top-1 agreement on hand-made next-token distributions. */
static void test_next_token_metrics(void)
{
    /* identical distributions: KL exactly 0, top-1 always agrees */
    const float same[2 * 3] = {1.0f, 2.0f, 0.5f, -1.0f, 0.0f, 3.0f};
    const int32_t targets[2] = {1, 2};
    pk_next_token_stats a = {0};
    pk_next_token_compare(same, same, targets, 2, 3, &a);
    CHECK(pk_stats_kl(&a) == 0.0, "KL of identical distributions %g", pk_stats_kl(&a));
    CHECK(pk_stats_top1(&a) == 1.0, "top-1 of identical distributions %g", pk_stats_top1(&a));

    /* p = (1/2, 1/2), q = (3/4, 1/4): KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3);
     * the target 0 has probability 3/4 under q, so ppl = 4/3 */
    const float p[2] = {0.0f, 0.0f}, q[2] = {(float)log(3.0), 0.0f};
    const int32_t zero = 0;
    pk_next_token_stats b = {0};
    pk_next_token_compare(p, q, &zero, 1, 2, &b);
    CHECK(near(pk_stats_kl(&b), 0.5 * log(4.0 / 3.0), 1e-7), "KL %.9f, want %.9f", pk_stats_kl(&b),
          0.5 * log(4.0 / 3.0));
    CHECK(near(pk_stats_ppl(&b), 4.0 / 3.0, 1e-6), "ppl %.9f, want 4/3", pk_stats_ppl(&b));
    CHECK(pk_stats_top1(&b) == 1.0, "argmax of a tie is the first token, as in greedy decoding");

    /* opposite favourites: top-1 disagrees; uniform over 4 tokens: ppl 4 */
    const float x[2] = {1.0f, 0.0f}, y[2] = {0.0f, 1.0f};
    pk_next_token_stats c = {0};
    pk_next_token_compare(x, y, &zero, 1, 2, &c);
    CHECK(pk_stats_top1(&c) == 0.0, "top-1 of opposite favourites %g", pk_stats_top1(&c));
    const float uniform[4] = {0, 0, 0, 0};
    const int32_t three = 3;
    pk_next_token_stats d = {0};
    pk_next_token_compare(uniform, uniform, &three, 1, 4, &d);
    CHECK(near(pk_stats_ppl(&d), 4.0, 1e-9), "ppl of a uniform 4-way choice %g", pk_stats_ppl(&d));
    pk_next_token_stats none = {0};
    CHECK(isnan(pk_stats_ppl(&none)) && isnan(pk_stats_kl(&none)), "no positions: undefined");

    /* answer agreement: position by position, over the longer answer */
    const int32_t ref[3] = {5, 6, 7}, one_off[3] = {5, 6, 8}, longer[4] = {5, 6, 7, 9};
    CHECK(pk_answer_agreement(ref, 3, ref, 3) == 1.0, "exact match agrees fully");
    CHECK(near(pk_answer_agreement(ref, 3, one_off, 3), 2.0 / 3, 1e-12), "one token of three differs");
    CHECK(near(pk_answer_agreement(ref, 3, longer, 4), 3.0 / 4, 1e-12), "an extra token counts against");
    CHECK(pk_answer_agreement(NULL, 0, NULL, 0) == 1.0 && pk_answer_agreement(NULL, 0, ref, 1) == 0.0,
          "empty answers");

    /* quality retained: compressed / baseline, perplexity baseline / compressed */
    const pk_quality base = {0.8, 10.0, 0.0, 1.0, 1.0}, press = {0.6, 12.5, 0.3, 0.9, 0.5};
    pk_quality kept = pk_quality_retained(&press, &base);
    CHECK(near(kept.retrieval_acc, 0.75, 1e-12) && near(kept.ppl, 0.8, 1e-12) && kept.kl == 0.3 &&
              near(kept.top1_agree, 0.9, 1e-12) && near(kept.answer_agree, 0.5, 1e-12),
          "retained %g %g %g %g %g", kept.retrieval_acc, kept.ppl, kept.kl, kept.top1_agree, kept.answer_agree);
    const pk_quality hopeless = {0, 10, 0, 1, 1};
    CHECK(isnan(pk_quality_retained(&press, &hopeless).retrieval_acc), "a baseline of 0 has nothing to retain");
}

/* The recommendation rule on hand-made rows. */
static void test_recommendation(void)
{
    const pk_candidate rows[] = {
        {0.0, 1.0},    /* the baseline: no reduction, never recommended */
        {0.3, 0.97},   /* qualifies */
        {0.5, 0.95},   /* qualifies, larger reduction: the pick */
        {0.7, 0.50},   /* too lossy */
        {0.9, NAN},    /* undefined retention never qualifies */
    };
    CHECK(pk_recommend(rows, 5, 0.95) == 2, "largest reduction with >= 95%% retained: %d",
          pk_recommend(rows, 5, 0.95));
    const pk_candidate tie[] = {{0.5, 0.96}, {0.5, 0.99}};
    CHECK(pk_recommend(tie, 2, 0.95) == 1, "a tie goes to more quality retained");
    const pk_candidate lossy[] = {{0.0, 1.0}, {0.5, 0.4}, {0.7, 0.94}};
    CHECK(pk_recommend(lossy, 3, 0.95) == -1, "none qualifies");
}

/* Press and KV type chosen together on a hand-made KV-type sweep: rows 0-3
 * are No Compression in f32 (everyone's baseline), f16, q8_0 and q4_0; 4-6 a
 * press keeping half the entries in f32, q8_0 and q4_0. Bytes are entries
 * times the entry size of a 64-wide head (516, 260, 140, 76). The smallest
 * cache that keeps 95% is the press in q8_0 (70,000 bytes, below No
 * Compression's 76,000 in q4_0, which also loses perplexity); the press in
 * q4_0, the only smaller one, loses quality and is named as the reason to stop
 * there. */
static void test_kv_type_recommendation(void)
{
    pk_compare_report r = {0};
    r.n_methods = 2;
    pk_compare_row rows[7] = {0};
    const struct {
        int method;
        pikv_kv_type type;
        size_t entries, entry_bytes;
        double retrieval, ppl;
    } spec[7] = {{0, PIKV_KV_F32, 1000, 516, 1, 1},      {0, PIKV_KV_F16, 1000, 260, 1, 1},
                 {0, PIKV_KV_Q8_0, 1000, 140, 1, 0.99}, {0, PIKV_KV_Q4_0, 1000, 76, 1, 0.90},
                 {1, PIKV_KV_F32, 500, 516, 1, 0.99},   {1, PIKV_KV_Q8_0, 500, 140, 1, 0.97},
                 {1, PIKV_KV_Q4_0, 500, 76, 0.5, 0.88}};
    for (int i = 0; i < 7; i++) {
        rows[i].method = spec[i].method;
        rows[i].kv_type_k = rows[i].kv_type_v = spec[i].type;
        rows[i].kv_bytes = spec[i].entries * spec[i].entry_bytes;
        rows[i].retained.retrieval_acc = spec[i].retrieval;
        rows[i].retained.ppl = spec[i].ppl;
    }
    r.rows = rows;
    r.n_rows = 7;
    r.f32_row = 0;
    r.f16_row = 1;
    const int best = pk_compare_recommend(&r);
    CHECK(best == 5, "the press in q8_0 is the smallest cache within 95%%: row %d", best);
    CHECK(pk_compare_next_rejected(&r, best) == 6, "the nearest larger saving, rejected: row %d (want 6)",
          pk_compare_next_rejected(&r, best));
    CHECK(near(pk_compare_kv_fraction(&r, 5, r.f16_row), 500.0 * 140 / (1000.0 * 260), 1e-12) &&
              near(pk_compare_kv_fraction(&r, 5, r.f32_row), 500.0 * 140 / (1000.0 * 516), 1e-12),
          "bytes against the f16 and f32 caches");
    CHECK(isnan(pk_compare_kv_fraction(&r, 5, -1)), "no reference, no fraction");
    char text[32];
    rows[6].kv_type_v = PIKV_KV_F16;
    pk_compare_kv_type_text(&rows[6], text, sizeof text);
    CHECK(strcmp(text, "q4_0/f16") == 0, "K/V types that differ: %s", text);
}

/* Method lists, templates and the baseline. */
static void test_methods(void)
{
    pk_method m[PK_COMPARE_MAX_METHODS];
    int n = 0;
    CHECK(pk_methods_parse(" knorm:{r} ; Half=snapkv:ratio=0.5,window=32;composed[knorm:0.2,streaming_llm:0.3]", m,
                           PK_COMPARE_MAX_METHODS, &n) == 0 && n == 3,
          "three methods, got %d: %s", n, pikv_last_error());
    if (n == 3) {
        CHECK(strcmp(m[0].name, "knorm") == 0 && strcmp(m[0].spec, "knorm:{r}") == 0, "templated: named by press");
        CHECK(strcmp(m[1].name, "Half") == 0 && strcmp(m[1].spec, "snapkv:ratio=0.5,window=32") == 0,
              "NAME=SPEC: '%s' '%s'", m[1].name, m[1].spec);
        CHECK(strcmp(m[2].name, m[2].spec) == 0, "a plain spec names itself");
    }
    CHECK(pk_methods_with_baseline(m, &n, PK_COMPARE_MAX_METHODS) == 0 && n == 4 && strcmp(m[0].spec, "none") == 0 &&
              strcmp(m[0].name, "No Compression") == 0 && strcmp(m[1].name, "knorm") == 0,
          "the baseline is added first");
    CHECK(pk_methods_parse("knorm:0.5;;none", m, PK_COMPARE_MAX_METHODS, &n) != 0 &&
              strstr(pikv_last_error(), "empty"),
          "an empty item is an error: %s", pikv_last_error());
    CHECK(pk_methods_parse("a=snapkv:0.1;none;b=knorm:0.2", m, PK_COMPARE_MAX_METHODS, &n) == 0 &&
              pk_methods_with_baseline(m, &n, PK_COMPARE_MAX_METHODS) == 0 && n == 3 &&
              strcmp(m[0].spec, "none") == 0 && strcmp(m[1].name, "a") == 0 && strcmp(m[2].name, "b") == 0,
          "the baseline moves first");

    pk_method d[3];
    CHECK(pk_methods_default(d) == 3 && strcmp(d[1].name, "Duo Attention") == 0 &&
              strcmp(d[2].name, "EPLB + Duo Attention") == 0,
          "the three methods of PiKVpress's comparison");
    const pk_method_params p = {0.6, 6, 2, 0.7};
    char spec[PK_COMPARE_SPEC_MAX];
    CHECK(pk_method_expand(d[2].spec, &p, spec, sizeof spec) == 0 &&
              strcmp(spec, "eplb_duo:ratio=0.6,experts=6,top_k=2,eplb_share=0.7") == 0,
          "expanded: %s", spec);
    CHECK(pk_method_expand(d[1].spec, &p, spec, sizeof spec) == 0 && strcmp(spec, "duo:ratio=0.6") == 0, "Duo: %s",
          spec);
    CHECK(pk_method_uses(d[2].spec, 'e') && !pk_method_uses(d[1].spec, 'e') && pk_method_uses(d[1].spec, 'r'),
          "placeholders found");
    CHECK(pk_method_expand("knorm:{x}", &p, spec, sizeof spec) != 0 && strstr(pikv_last_error(), "{x}"),
          "unknown placeholder: %s", pikv_last_error());
}

/* Scenario presets and the context cap. */
static void test_scenarios(void)
{
    const char *known;
    const pk_scenario *s = pk_scenario_find("long-doc-qa", &known);
    CHECK(s && s->ratio == 0.6 && s->experts == 6 && s->context_tokens == 4000, "long-doc-qa preset");
    const pk_scenario *chat = pk_scenario_find("chat", NULL), *content = pk_scenario_find("content", NULL);
    CHECK(chat && chat->ratio == 0.4 && chat->experts == 4 && chat->context_tokens == 1000, "chat preset");
    CHECK(content && content->ratio == 0.5 && content->experts == 4 && content->context_tokens == 2000,
          "content preset");
    CHECK(!pk_scenario_find("nope", &known) && strstr(known, "long-doc-qa"), "unknown scenario");
    /* 4000 tokens on a 2048-position model with a 10-token question and 24 answer tokens */
    CHECK(pk_context_cap(4000, 2048, 10 + 24) == 2014, "capped at 2048 - 34: %d", pk_context_cap(4000, 2048, 34));
    CHECK(pk_context_cap(1000, 2048, 34) == 1000, "chat fits");
    CHECK(pk_context_cap(2014, 2048, 34) == 2014 && pk_context_cap(2015, 2048, 34) == 2014, "the edge");
}

/* Count the occurrences of needle in text. */
static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* The SVG is one well-formed element with a polyline per series. */
static void test_svg(void)
{
    const double x[3] = {0.3, 0.5, 0.7}, y1[3] = {10, 8, 6}, y2[3] = {12, NAN, 4};
    const pk_svg_series s[2] = {{"No <Compression> & co", x, y1, 3}, {"knorm", x, y2, 3}};
    char *svg = pk_svg_line_chart("Memory \"vs\" ratio", "ratio", "MiB", s, 2);
    CHECK(svg != NULL, "chart: %s", pikv_last_error());
    if (!svg) return;
    const size_t len = strlen(svg);
    CHECK(strncmp(svg, "<svg", 4) == 0, "starts with <svg");
    CHECK(len > 7 && strcmp(svg + len - 7, "</svg>\n") == 0, "ends with </svg>");
    CHECK(count(svg, "<svg") == 1 && count(svg, "</svg>") == 1, "one svg element");
    CHECK(count(svg, "<polyline") == 2, "one polyline per series: %d", count(svg, "<polyline"));
    CHECK(count(svg, "<circle") == 5, "a marker per finite point: %d", count(svg, "<circle"));
    CHECK(strstr(svg, "No &lt;Compression&gt; &amp; co") && strstr(svg, "Memory &quot;vs&quot; ratio"),
          "names and title escaped");
    CHECK(count(svg, "<text") >= 2 + 2 + 2 + 3, "title, axis labels, legend and tick labels");
    CHECK(strstr(svg, ">0.3<") && strstr(svg, ">0.7<") && strstr(svg, ">0<"), "ticks labelled, y from 0");
    CHECK(count(svg, "<") == count(svg, ">"), "balanced angle brackets");
    pikv_free(svg);
}

/* A non-empty array of objects that each have all the keys. */
static int objects_have(const cJSON *array, const char *const *keys, int n_keys)
{
    if (!cJSON_IsArray(array) || cJSON_GetArraySize(array) == 0) return 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        for (int k = 0; k < n_keys; k++)
            if (!cJSON_HasObjectItem(item, keys[k])) {
                fprintf(stderr, "missing key %s\n", keys[k]);
                return 0;
            }
    }
    return 1;
}

/* No compression against itself on the bundled model: exactly all retained. */
static void test_none_against_itself(pikv_session *s, const pikv_model *m, const pk_haystack *h)
{
    pikv_press *none = pikv_press_new("none", m, MODEL);
    CHECK(none != NULL, "none press: %s", pikv_last_error());
    if (!none) return;
    const pk_quality_config qc = {.haystack = h, .n_tasks = 2, .task_min_tokens = 100, .task_max_tokens = 150,
                                  .seed = 1, .n_slices = 2, .slice_context = 100, .slice_tokens = 16};
    pk_quality_reference ref = {0};
    pk_quality base, again;
    CHECK(pk_quality_measure(s, none, &qc, &ref, NULL, NULL, &base) == 0, "reference: %s", pikv_last_error());
    CHECK(ref.logits && ref.n_rows == 32, "reference logits kept: %d rows", ref.n_rows);
    CHECK(pk_quality_measure(s, none, &qc, &ref, NULL, NULL, &again) == 0, "again: %s", pikv_last_error());
    again.answer_agree = base.answer_agree = 1;
    const pk_quality kept = pk_quality_retained(&again, &base);
    CHECK(again.kl == 0.0 && again.top1_agree == 1.0, "KL %g, top-1 %g against itself", again.kl, again.top1_agree);
    CHECK(kept.retrieval_acc == 1.0 && kept.ppl == 1.0 && kept.top1_agree == 1.0,
          "retained retrieval %g, ppl %g, top-1 %g", kept.retrieval_acc, kept.ppl, kept.top1_agree);
    CHECK(base.ppl > 1 && base.ppl < 1000, "a plausible perplexity: %g", base.ppl);
    pk_quality_config bad = qc;
    bad.slice_context = 2048;
    CHECK(pk_quality_measure(s, none, &bad, &ref, NULL, NULL, &again) != 0 && strstr(pikv_last_error(), "positions"),
          "a slice past n_positions: %s", pikv_last_error());
    pk_quality_reference_free(&ref);
    pikv_press_free(none);
}

/* A real run on a short context: the JSON schema, the CSV and the text. */
static void test_small_run(pikv_session *s, const pk_haystack *h)
{
    pk_method methods[PK_COMPARE_MAX_METHODS];
    int n = 0;
    if (pk_methods_parse("knorm:{r};streaming_llm:0.5", methods, PK_COMPARE_MAX_METHODS, &n) ||
        pk_methods_with_baseline(methods, &n, PK_COMPARE_MAX_METHODS)) {
        CHECK(0, "methods: %s", pikv_last_error());
        return;
    }
    pk_task task;
    if (pk_compare_needle_task(h, 128, 1, &task)) {
        CHECK(0, "task: %s", pikv_last_error());
        return;
    }
    const pk_compare_config c = {.haystack = h, .model_dir = MODEL, .session = s, .model_name = "pikv-ref-14m",
                                 .machine = "test machine", .context = task.context, .n_context = task.n_context,
                                 .question = task.question, .n_question = task.n_question,
                                 .question_text = "What is the pass key?", .context_source = "a needle task",
                                 .task = &task, .methods = methods, .n_methods = n,
                                 .params = {0.5, 4, 2, 0.7}, .max_new_tokens = 4, .reps = 1, .n_tasks = 2,
                                 .seed = 1};
    pk_compare_report r;
    CHECK(pk_compare_run(&c, &r) == 0, "run: %s", pikv_last_error());
    pk_task_free(&task);
    if (r.rows == NULL) return;
    CHECK(r.n_methods == 3 && r.n_rows == 3 && r.rows[r.main_rows[0]].quality.kl == 0.0 &&
              r.rows[r.main_rows[0]].retained.retrieval_acc == 1.0,
          "three rows; the baseline retains everything of itself");
    CHECK(r.rows[r.main_rows[1]].kv_bytes * 2 <= r.rows[r.main_rows[0]].kv_bytes + 18576,
          "knorm:0.5 halves the KV bytes");

    cJSON *json = pk_report_json(&r);
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    CHECK(o != NULL, "the JSON parses back");
    const char *const top[] = {"model", "context_tokens", "mode", "machine", "threads", "methods", "improvements",
                               "recommendation", "question", "reps"};
    for (size_t i = 0; o && i < sizeof top / sizeof *top; i++)
        CHECK(cJSON_HasObjectItem(o, top[i]), "top-level key %s", top[i]);
    const cJSON *ms = cJSON_GetObjectItem(o, "methods");
    const char *const method_keys[] = {"name", "press", "kv_bytes", "prefill_s", "compression_s", "decode_s",
                                       "decode_tok_s", "quality", "prefill_s_min", "prefill_s_max",
                                       "decode_tok_s_min", "decode_tok_s_max", "retained", "answer"};
    CHECK(cJSON_GetArraySize(ms) == 3 && objects_have(ms, method_keys, sizeof method_keys / sizeof *method_keys),
          "each method has every key");
    const char *const quality_keys[] = {"retrieval_acc", "ppl", "kl", "top1_agree", "answer_agree"};
    const cJSON *m;
    cJSON_ArrayForEach(m, ms)
    {
        const cJSON *q = cJSON_GetObjectItem(m, "quality");
        for (size_t i = 0; i < sizeof quality_keys / sizeof *quality_keys; i++)
            CHECK(cJSON_IsNumber(cJSON_GetObjectItem(q, quality_keys[i])), "quality.%s is a number",
                  quality_keys[i]);
    }
    const cJSON *first = cJSON_GetArrayItem(ms, 0);
    CHECK(first && strcmp(cJSON_GetObjectItem(first, "press")->valuestring, "none") == 0 &&
              strcmp(cJSON_GetObjectItem(first, "name")->valuestring, "No Compression") == 0,
          "the baseline comes first");
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(ms, 1), "press")->valuestring, "knorm:0.5") == 0,
          "the press is the expanded spec");
    const char *const gain_keys[] = {"method", "reference", "memory_reduction_pct", "speed_improvement_pct"};
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "improvements")) == 2 &&
              objects_have(cJSON_GetObjectItem(o, "improvements"), gain_keys, 4),
          "an improvement per compressing method");
    CHECK(strcmp(cJSON_GetObjectItem(o, "mode")->valuestring, "query-agnostic") == 0, "mode");
    cJSON_Delete(o);
    cJSON_free(text);

    char *csv = pk_report_csv(&r);
    CHECK(csv && count(csv, "\n") == 4 && strncmp(csv, "sweep,x,name,press,", 19) == 0 &&
              count(csv, "\nmain,,") == 3,
          "CSV: a header and one row per method");
    pikv_free(csv);

    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    pk_report_text(f, &r);
    fclose(f);
    const char *const sections[] = {"Model:", "Device:", "Ratio:", "Context:", "Question:", "Mode:",
                                    "Testing No Compression", "Memory:", "Time:", "Speed:", "Quality:",
                                    "COMPARISON SUMMARY", "RELATIVE IMPROVEMENTS", "Memory reduction:",
                                    "Speed improvement:", "ANSWERS", "RECOMMENDATION"};
    for (size_t i = 0; i < sizeof sections / sizeof *sections; i++)
        CHECK(out && strstr(out, sections[i]), "text report has %s", sections[i]);
    free(out);
    pk_compare_report_free(&r);
}

/* Every allocation of a small detailed run made to fail in turn: the run
 * reports an error and frees what it took (the ASan build checks the
 * freeing), until one late enough lets it finish. On the tiny GPT-2 fixture
 * (256 positions), where a detailed run takes a fraction of a second. */
static void test_allocation_failures(void)
{
    char dir[512], haystack_path[] = HAYSTACK;
    snprintf(dir, sizeof dir, "%s/fixtures/tiny-gpt2", shared_dir());
    pikv_model *m = pikv_model_load(dir);
    pikv_tokenizer *tok = m ? pikv_tokenizer_load(dir) : NULL;
    pikv_session *s = tok ? pikv_session_new(m, 1) : NULL;
    pk_haystack h = {0};
    pk_method methods[PK_COMPARE_MAX_METHODS];
    int n = 0;
    pk_task task = {0};
    if (!s || pk_haystack_load(&h, tok, haystack_path) ||
        pk_methods_parse("none;knorm:{r};sinks=streaming_llm:ratio={r},sink={e}", methods, PK_COMPARE_MAX_METHODS,
                         &n) ||
        pk_compare_needle_task(&h, 96, 1, &task)) {
        CHECK(0, "setup: %s", pikv_last_error());
    } else {
        const pk_compare_config c = {.haystack = &h, .model_dir = dir, .session = s, .context = task.context,
                                     .n_context = task.n_context, .question = task.question,
                                     .n_question = task.n_question, .task = &task, .methods = methods,
                                     .n_methods = n, .params = {0.5, 4, 2, 0.7}, .max_new_tokens = 2, .reps = 1,
                                     .n_tasks = 1, .detailed = 1, .seed = 1};
        int failures = 0, finished = 0;
        for (long k = 1; k < 5000 && !finished; k++) {
            pk_compare_report r;
            pk_test_fail_alloc_after(k);
            const int rc = pk_compare_run(&c, &r);
            pk_test_fail_alloc_after(0);
            if (rc == 0) {
                finished = 1;
                CHECK(r.n_points > 0 && r.n_rows > 3, "the detailed run has sweep points");
                pk_compare_report_free(&r);
            } else {
                failures += strstr(pikv_last_error(), "out of memory") != NULL;
            }
        }
        CHECK(finished && failures > 10, "runs that failed cleanly: %d, then one finished: %d", failures, finished);
    }
    pk_task_free(&task);
    pk_haystack_free(&h);
    pikv_session_free(s);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
}

/* Pure arithmetic first, then the measurements on the bundled model, then the
 * allocation failures on the tiny fixture. */
int main(void)
{
    test_improvements();
    test_gains_of_report();
    test_next_token_metrics();
    test_recommendation();
    test_kv_type_recommendation();
    test_methods();
    test_scenarios();
    test_svg();

    pikv_model *m = pikv_model_load(MODEL);
    pikv_tokenizer *tok = m ? pikv_tokenizer_load(MODEL) : NULL;
    pk_haystack h = {0};
    pikv_session *s = NULL;
    CHECK(tok != NULL, "load %s: %s", MODEL, pikv_last_error());
    if (tok) {
        CHECK(pk_haystack_load(&h, tok, HAYSTACK) == 0, "haystack: %s", pikv_last_error());
        s = pikv_session_new(m, 1);
        CHECK(s != NULL, "session: %s", pikv_last_error());
    }
    if (s && h.ids) {
        test_none_against_itself(s, m, &h);
        test_small_run(s, &h);
    }
    pikv_session_free(s);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    test_allocation_failures();
    return check_done("compare");
}
