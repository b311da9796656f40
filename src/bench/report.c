#include "bench/report.h"
#include "bench/json.h"
#include "bench/svg.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const double MiB = 1048576.0;

/* The compression mode a report's figures come from. */
static const char *mode_name(const pk_compare_report *r) { return r->query_aware ? "query-aware" : "query-agnostic"; }

/* The display name of a row's method. */
static const char *row_name(const pk_compare_report *r, const pk_compare_row *w) { return r->methods[w->method].name; }

/* A percentage of a fraction, or n/a when it is undefined. */
static const char *percent(char *buf, size_t cap, double fraction)
{
    if (isfinite(fraction)) snprintf(buf, cap, "%.1f%%", 100 * fraction);
    else snprintf(buf, cap, "n/a");
    return buf;
}

/* "median (min..max)" with the given decimals; the spread only with several repetitions. */
static const char *spread(char *buf, size_t cap, const pk_summary *s, int decimals)
{
    if (s->n > 1) snprintf(buf, cap, "%.*f (%.*f..%.*f)", decimals, s->median, decimals, s->min, decimals, s->max);
    else snprintf(buf, cap, "%.*f", decimals, s->median);
    return buf;
}

/* Text in double quotes with newlines, tabs, quotes and other control bytes escaped. */
static void put_quoted(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '\n') fputs("\\n", out);
        else if (*s == '\t') fputs("\\t", out);
        else if (*s == '"' || *s == '\\') fprintf(out, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(out, "\\x%02x", (unsigned char)*s);
        else fputc(*s, out);
    }
    fputc('"', out);
}

/* Width of the widest method name, for aligned tables. */
static int name_width(const pk_compare_report *r)
{
    int w = 6;
    for (int m = 0; m < r->n_methods; m++)
        if ((int)strlen(r->methods[m].name) > w) w = (int)strlen(r->methods[m].name);
    return w;
}

/* A line of dashes under a heading. */
static void rule(FILE *out, int width)
{
    for (int i = 0; i < width; i++) fputc('-', out);
    fputc('\n', out);
}

/* The header: what ran, where, on what, and how it was measured. */
static void text_header(FILE *out, const pk_compare_report *r)
{
    fprintf(out, "pikv compare: KV-cache compression methods on one model\n");
    rule(out, 60);
    fprintf(out, "Model:        %s\n", r->model);
    if (strcmp(r->device, "cpu") == 0)
        fprintf(out, "Device:       %s; %d thread%s\n", r->machine, r->threads, r->threads == 1 ? "" : "s");
    else
        fprintf(out, "Device:       %s (--device %s; the host's part of a press on %d thread%s)\n", r->machine,
                r->device, r->threads, r->threads == 1 ? "" : "s");
    fprintf(out, "Ratio:        %g (experts %d, top-k %d, EPLB share %g)\n", r->params.ratio, r->params.experts,
            r->params.top_k, r->params.eplb_share);
    fprintf(out, "Context:      %d tokens (%s)\n", r->context_tokens, r->context_source);
    fprintf(out, "Question:     ");
    put_quoted(out, r->question);
    fprintf(out, " (%d tokens); greedy answers of %d tokens\n", r->question_tokens, r->max_new_tokens);
    fprintf(out, "Mode:         %s (%s)\n", mode_name(r),
            r->query_aware ? "the press sees the question when it compresses"
                           : "the press compresses the context before the question is known");
    fprintf(out, "Timing:       %d repetition%s, methods in rotated order; medians (min..max)%s\n", r->reps,
            r->reps == 1 ? "" : "s", r->reps < 3 ? "; fewer than 3, so the times are rough" : "");
    fprintf(out, "              prefill = the context and question passes, presses excluded; decode = the answer\n"
                 "              tokens after the first, each reading the compressed cache\n");
    fprintf(out, "Quality:      against No Compression on the same inputs: %d needle tasks of %d-%d tokens;\n",
            r->n_tasks, r->task_min_tokens, r->task_max_tokens);
    fprintf(out, "              perplexity, KL and top-1 agreement over %d haystack slices of %d + %d tokens\n\n",
            r->n_slices, r->slice_context, r->slice_tokens);
}

/* One method's block, as in PiKVpress's comparison's "Testing ..." lines. */
static void text_method(FILE *out, const pk_compare_report *r, const pk_compare_row *w)
{
    char a[64], b[64], c[64], d[64], p1[16], p2[16];
    if (strcmp(row_name(r, w), w->spec) == 0) fprintf(out, "Testing %s...\n", w->spec);
    else fprintf(out, "Testing %s (%s)...\n", row_name(r, w), w->spec);
    fprintf(out, "   Memory:   %.2f MiB of KV cache held after compression (%.2f MiB before)\n", w->kv_bytes / MiB,
            w->kv_bytes_full / MiB);
    if (w->press_note[0]) fprintf(out, "   Press:    %s\n", w->press_note);
    fprintf(out, "   Time:     prefill %s s, compression %s s, decode %s s; total %s s\n",
            spread(a, sizeof a, &w->prefill_s, 3), spread(b, sizeof b, &w->compression_s, 3),
            spread(c, sizeof c, &w->decode_s, 3), spread(d, sizeof d, &w->total_s, 3));
    fprintf(out, "   Speed:    decode %s tok/s, prefill %s tok/s\n", spread(a, sizeof a, &w->decode_tok_s, 1),
            spread(b, sizeof b, &w->prefill_tok_s, 0));
    fprintf(out, "   Quality:  retrieval %.2f (%s retained), perplexity %.3f (%s retained), KL %.4f, top-1 %.3f, "
                 "answer agreement %.3f\n\n",
            w->quality.retrieval_acc, percent(p1, sizeof p1, w->retained.retrieval_acc), w->quality.ppl,
            percent(p2, sizeof p2, w->retained.ppl), w->quality.kl, w->quality.top1_agree, w->quality.answer_agree);
}

/* The summary table of the main methods. */
static void text_summary(FILE *out, const pk_compare_report *r)
{
    const int nw = name_width(r);
    char p[16];
    fprintf(out, "COMPARISON SUMMARY (medians)\n");
    rule(out, nw + 96);
    fprintf(out, "%-*s  %8s  %9s  %10s  %8s  %7s  %12s  %9s  %8s  %8s\n", nw, "Method", "KV MiB", "Prefill s",
            "Compress s", "Decode s", "Total s", "Decode tok/s", "Retrieval", "Retained", "PPL");
    rule(out, nw + 96);
    for (int m = 0; m < r->n_methods; m++) {
        const pk_compare_row *w = &r->rows[r->main_rows[m]];
        fprintf(out, "%-*s  %8.2f  %9.3f  %10.3f  %8.3f  %7.3f  %12.1f  %9.2f  %8s  %8.3f\n", nw, row_name(r, w),
                w->kv_bytes / MiB, w->prefill_s.median, w->compression_s.median, w->decode_s.median,
                w->total_s.median, w->decode_tok_s.median, w->quality.retrieval_acc,
                percent(p, sizeof p, w->retained.retrieval_acc), w->quality.ppl);
    }
    fputc('\n', out);
}

/* Memory reduction and speed improvement of each method against the baseline,
 * and of EPLB + Duo against Duo. */
static void text_improvements(FILE *out, const pk_compare_report *r)
{
    pk_compare_gain gains[PK_COMPARE_MAX_METHODS + 1];
    const int n = pk_compare_gains(r, gains, PK_COMPARE_MAX_METHODS + 1);
    fprintf(out, "RELATIVE IMPROVEMENTS (memory: KV bytes held; speed: decode tokens/s)\n");
    rule(out, 60);
    if (pk_machine_busy(&r->load))
        fprintf(out, "NOTICE: the machine was busy (1-minute load average %.2f before, %.2f after, on %d cores; idle is "
                     "below %.1f per core): the speed figures below are not results.\n\n",
                r->load.before, r->load.after, r->load.cores, PK_IDLE_LOAD_PER_CORE);
    if (n == 0) fprintf(out, "(only the baseline was measured)\n");
    for (int i = 0; i < n; i++) {
        const int against_baseline = gains[i].reference == r->main_rows[0];
        fprintf(out, "%s vs %s:\n", row_name(r, &r->rows[gains[i].row]), row_name(r, &r->rows[gains[i].reference]));
        fprintf(out, "  %s:  %.1f%%\n", against_baseline ? "Memory reduction" : "Additional memory reduction",
                gains[i].gain.memory_reduction_pct);
        const pk_speed_verdict v = pk_speed_judge(&r->rows[gains[i].row].decode_tok_s,
                                                  &r->rows[gains[i].reference].decode_tok_s, &r->load);
        fprintf(out, "  %s: %.1f%%%s%s\n\n", against_baseline ? "Speed improvement" : "Additional speed improvement",
                gains[i].gain.speed_improvement_pct, v == PK_SPEED_SIGNIFICANT ? "" : " -- ",
                v == PK_SPEED_SIGNIFICANT ? "" : pk_speed_verdict_text(v));
    }
}

/* Each main method's greedy answer, and whether it is right on a needle task. */
static void text_answers(FILE *out, const pk_compare_report *r)
{
    const int nw = name_width(r);
    fprintf(out, "ANSWERS (greedy, cut at end-of-text)\n");
    rule(out, 60);
    for (int m = 0; m < r->n_methods; m++) {
        const pk_compare_row *w = &r->rows[r->main_rows[m]];
        fprintf(out, "%-*s  ", nw + 1, row_name(r, w));
        put_quoted(out, w->answer ? w->answer : "");
        fprintf(out, "%s\n", w->answer_correct < 0 ? "" : w->answer_correct ? "  (correct)" : "  (wrong)");
    }
    fputc('\n', out);
}

/* A detailed run's line on one candidate of the recommendation: method, KV
 * type, bytes against its baseline and the quality it keeps. */
static void text_candidate(FILE *out, const pk_compare_report *r, int row)
{
    const pk_compare_row *w = &r->rows[row], *base = &r->rows[w->baseline];
    char kv[32], base_kv[32], p1[16], p2[16];
    pk_compare_kv_type_text(w, kv, sizeof kv);
    pk_compare_kv_type_text(base, base_kv, sizeof base_kv);
    fprintf(out, "%s (%s) with a %s KV cache at %d context tokens: %zu KV bytes, %.1f%% less than No Compression "
                 "in %s on the same inputs;\n    %s of retrieval accuracy and %s of perplexity retained",
            row_name(r, w), w->spec, kv, w->context_tokens, w->kv_bytes, 100 * pk_compare_kv_reduction(r, row),
            base_kv, percent(p1, sizeof p1, w->retained.retrieval_acc), percent(p2, sizeof p2, w->retained.ppl));
}

/* The recommendation line, with the rule it follows. A detailed run names the
 * KV type with the method and, as the reason it goes no further, the nearest
 * setting that would have saved more. */
static void text_recommendation(FILE *out, const pk_compare_report *r)
{
    fprintf(out, "RECOMMENDATION (the largest KV reduction%s that keeps >= %.0f%% of the baseline's retrieval accuracy\n"
                 "and >= %.0f%% of its perplexity)\n",
            r->detailed ? ", press and KV type together," : "", 100 * PK_RECOMMEND_MIN_RETAINED,
            100 * PK_RECOMMEND_MIN_RETAINED);
    const int best = pk_compare_recommend(r);
    if (best < 0) {
        fprintf(out, "  None: no compressing method%s keeps %.0f%% of retrieval accuracy and perplexity in %s mode.\n\n",
                r->detailed ? " or sweep point" : "", 100 * PK_RECOMMEND_MIN_RETAINED, mode_name(r));
        return;
    }
    const pk_compare_row *w = &r->rows[best];
    char p[16];
    if (!r->detailed) {
        fprintf(out, "  %s (%s) at %d context tokens: %.1f%% less KV memory, %s of retrieval accuracy retained, "
                     "in %s mode.\n\n",
                row_name(r, w), w->spec, w->context_tokens, 100 * pk_compare_kv_reduction(r, best),
                percent(p, sizeof p, w->retained.retrieval_acc), mode_name(r));
        return;
    }
    fprintf(out, "  ");
    text_candidate(out, r, best);
    fprintf(out, ", in %s mode.\n", mode_name(r));
    const int next = pk_compare_next_rejected(r, best);
    if (next < 0) {
        fprintf(out, "  No measured setting saves more.\n\n");
        return;
    }
    fprintf(out, "  Not smaller, because the nearest setting that saves more keeps too little: ");
    text_candidate(out, r, next);
    fprintf(out, ".\n\n");
}

/* The x value of a sweep point as text (of the ratio, experts and context sweeps). */
static void sweep_x(char *buf, size_t cap, const pk_sweep_point *pt)
{
    if (pt->sweep == PK_SWEEP_RATIO) snprintf(buf, cap, "%g", pt->x);
    else snprintf(buf, cap, "%d", (int)pt->x);
}

/* The KV-type sweep's table: besides quality, the bytes each point holds
 * against No Compression in an f32 and in an f16 cache on the same inputs. */
static void text_kv_sweep(FILE *out, const pk_compare_report *r)
{
    const int nw = name_width(r);
    int any = 0;
    for (int i = 0; i < r->n_points && !any; i++) any = r->points[i].sweep == PK_SWEEP_KV_TYPE;
    if (!any) return;
    fprintf(out, "SWEEP: KV CACHE TYPE (quality and reduction against No Compression in f32; vs f32 / f16 cache =\n"
                 "KV bytes / No Compression's bytes in that type, same inputs)\n");
    rule(out, nw + 110);
    fprintf(out, "%9s  %-*s  %10s  %12s  %12s  %12s  %9s  %8s  %8s  %8s  %7s  %6s\n", "kv_type", nw, "Method",
            "KV bytes", "vs f32 cache", "vs f16 cache", "Decode tok/s", "Retrieval", "Retained", "PPL",
            "PPL kept", "KL", "Top-1");
    rule(out, nw + 110);
    for (int i = 0; i < r->n_points; i++) {
        const pk_sweep_point *pt = &r->points[i];
        if (pt->sweep != PK_SWEEP_KV_TYPE) continue;
        const pk_compare_row *w = &r->rows[pt->row];
        char kv[32], f32[16], f16[16], p1[16], p2[16];
        pk_compare_kv_type_text(w, kv, sizeof kv);
        fprintf(out, "%9s  %-*s  %10zu  %12s  %12s  %12.1f  %9.2f  %8s  %8.3f  %8s  %7.4f  %6.3f\n", kv, nw,
                row_name(r, w), w->kv_bytes, percent(f32, sizeof f32, pk_compare_kv_fraction(r, pt->row, r->f32_row)),
                percent(f16, sizeof f16, pk_compare_kv_fraction(r, pt->row, r->f16_row)), w->decode_tok_s.median,
                w->quality.retrieval_acc, percent(p1, sizeof p1, w->retained.retrieval_acc), w->quality.ppl,
                percent(p2, sizeof p2, w->retained.ppl), w->quality.kl, w->quality.top1_agree);
    }
    fputc('\n', out);
}

/* One table per sweep of the detailed run (the KV-type sweep's has its own columns). */
static void text_sweeps(FILE *out, const pk_compare_report *r)
{
    static const char *const titles[PK_SWEEP_CONTEXT + 1] = {"COMPRESSION RATIO", "NUMBER OF EXPERTS",
                                                             "CONTEXT LENGTH (tokens)"};
    const int nw = name_width(r);
    for (int s = 0; s <= PK_SWEEP_CONTEXT; s++) {
        int any = 0;
        for (int i = 0; i < r->n_points && !any; i++) any = r->points[i].sweep == (pk_sweep)s;
        if (!any) continue;
        fprintf(out, "SWEEP: %s\n", titles[s]);
        rule(out, nw + 86);
        fprintf(out, "%7s  %-*s  %8s  %12s  %9s  %8s  %8s  %7s  %6s  %7s\n", pk_sweep_names[s], nw, "Method", "KV MiB",
                "Decode tok/s", "Retrieval", "Retained", "PPL", "KL", "Top-1", "Context");
        rule(out, nw + 86);
        for (int i = 0; i < r->n_points; i++) {
            const pk_sweep_point *pt = &r->points[i];
            if (pt->sweep != (pk_sweep)s) continue;
            const pk_compare_row *w = &r->rows[pt->row];
            char x[32], p[16];
            sweep_x(x, sizeof x, pt);
            fprintf(out, "%7s  %-*s  %8.2f  %12.1f  %9.2f  %8s  %8.3f  %7.4f  %6.3f  %7d\n", x, nw, row_name(r, w),
                    w->kv_bytes / MiB, w->decode_tok_s.median, w->quality.retrieval_acc,
                    percent(p, sizeof p, w->retained.retrieval_acc), w->quality.ppl, w->quality.kl,
                    w->quality.top1_agree, w->context_tokens);
        }
        fputc('\n', out);
    }
    text_kv_sweep(out, r);
}

/* On a device: each method's sequences at the KV budget and their decode
 * speed together, against No Compression's. */
static void text_capacity(FILE *out, const pk_compare_report *r)
{
    if (r->n_capacity == 0) return;
    const int nw = name_width(r);
    const pk_device_capacity *base = &r->capacity[0];
    fprintf(out, "CAPACITY AT A %.2f GiB KV BUDGET (sequences of the context, each decoding %d tokens, decoded "
                 "together on the %s device)\n",
            base->budget_bytes / (MiB * 1024), r->max_new_tokens, r->device);
    rule(out, nw + 74);
    fprintf(out, "%-*s  %12s  %9s  %14s  %12s  %9s\n", nw, "Method", "KV/seq MiB", "Sequences", "Decode tok/s",
            "per sequence", "vs none");
    rule(out, nw + 74);
    for (int m = 0; m < r->n_capacity; m++) {
        const pk_device_capacity *k = &r->capacity[m];
        fprintf(out, "%-*s  %12.3f  %9d  %14.0f  %12.1f  %8.2fx%s\n", nw, row_name(r, &r->rows[r->main_rows[m]]),
                k->per_seq_bytes / MiB, k->admitted, k->decode_tok_s, k->ran ? k->decode_tok_s / k->ran : 0,
                base->decode_tok_s > 0 ? k->decode_tok_s / base->decode_tok_s : 0,
                k->ran < k->admitted ? " (speed of the first sequences that ran)" : "");
    }
    fputc('\n', out);
}

/* The whole text report, in the order of PiKVpress's comparison. */
void pk_report_text(FILE *out, const pk_compare_report *r)
{
    text_header(out, r);
    for (int m = 0; m < r->n_methods; m++) text_method(out, r, &r->rows[r->main_rows[m]]);
    text_summary(out, r);
    text_improvements(out, r);
    text_answers(out, r);
    text_capacity(out, r);
    if (r->detailed) text_sweeps(out, r);
    text_recommendation(out, r);
}

/* ---- JSON --------------------------------------------------------------- */

/* The five quality measures as an object. */
static cJSON *quality_json(const pk_quality *q)
{
    cJSON *o = cJSON_CreateObject();
    pk_json_number(o, "retrieval_acc", q->retrieval_acc);
    pk_json_number(o, "ppl", q->ppl);
    pk_json_number(o, "kl", q->kl);
    pk_json_number(o, "top1_agree", q->top1_agree);
    pk_json_number(o, "answer_agree", q->answer_agree);
    return o;
}

/* One measured row. */
static cJSON *row_json(const pk_compare_report *r, const pk_compare_row *w)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", row_name(r, w));
    cJSON_AddStringToObject(o, "press", w->spec);
    cJSON_AddNumberToObject(o, "context_tokens", w->context_tokens);
    cJSON_AddNumberToObject(o, "kv_bytes", (double)w->kv_bytes);
    cJSON_AddNumberToObject(o, "kv_bytes_full", (double)w->kv_bytes_full);
    if (w->press_note[0]) cJSON_AddStringToObject(o, "press_note", w->press_note);
    pk_json_summary(o, "prefill_s", &w->prefill_s, PK_SUMMARY_FLAT);
    pk_json_summary(o, "compression_s", &w->compression_s, PK_SUMMARY_FLAT);
    pk_json_summary(o, "decode_s", &w->decode_s, PK_SUMMARY_FLAT);
    pk_json_summary(o, "total_s", &w->total_s, PK_SUMMARY_FLAT);
    pk_json_summary(o, "decode_tok_s", &w->decode_tok_s, PK_SUMMARY_FLAT);
    pk_json_summary(o, "prefill_tok_s", &w->prefill_tok_s, PK_SUMMARY_FLAT);
    cJSON_AddItemToObject(o, "quality", quality_json(&w->quality));
    cJSON *kept = quality_json(&w->retained);
    cJSON_DeleteItemFromObject(kept, "kl");
    cJSON_AddItemToObject(o, "retained", kept);
    cJSON_AddStringToObject(o, "answer", w->answer ? w->answer : "");
    if (w->answer_correct < 0) cJSON_AddNullToObject(o, "answer_correct");
    else cJSON_AddBoolToObject(o, "answer_correct", w->answer_correct);
    return o;
}

/* The report as one JSON object: the header, the methods, improvements,
 * recommendation, and the sweep points of a detailed run. */
cJSON *pk_report_json(const pk_compare_report *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "model", r->model);
    cJSON_AddStringToObject(o, "machine", r->machine);
    cJSON_AddStringToObject(o, "device", r->device);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddNumberToObject(o, "context_tokens", r->context_tokens);
    cJSON_AddStringToObject(o, "context_source", r->context_source);
    cJSON_AddStringToObject(o, "question", r->question);
    cJSON_AddNumberToObject(o, "question_tokens", r->question_tokens);
    cJSON_AddNumberToObject(o, "max_new_tokens", r->max_new_tokens);
    cJSON_AddStringToObject(o, "mode", mode_name(r));
    cJSON_AddNumberToObject(o, "reps", r->reps);
    cJSON_AddNumberToObject(o, "tasks", r->n_tasks);
    cJSON_AddNumberToObject(o, "ppl_slices", r->n_slices);
    cJSON_AddNumberToObject(o, "ratio", r->params.ratio);
    cJSON_AddNumberToObject(o, "experts", r->params.experts);
    cJSON_AddNumberToObject(o, "top_k", r->params.top_k);
    cJSON_AddNumberToObject(o, "eplb_share", r->params.eplb_share);
    cJSON *load = cJSON_AddObjectToObject(o, "load_average");
    cJSON_AddNumberToObject(load, "before", r->load.before);
    cJSON_AddNumberToObject(load, "after", r->load.after);
    cJSON_AddNumberToObject(load, "cores", r->load.cores);
    cJSON_AddBoolToObject(load, "busy", pk_machine_busy(&r->load));
    cJSON *methods = cJSON_AddArrayToObject(o, "methods");
    for (int m = 0; m < r->n_methods; m++) cJSON_AddItemToArray(methods, row_json(r, &r->rows[r->main_rows[m]]));
    pk_compare_gain gains[PK_COMPARE_MAX_METHODS + 1];
    const int n = pk_compare_gains(r, gains, PK_COMPARE_MAX_METHODS + 1);
    cJSON *improvements = cJSON_AddArrayToObject(o, "improvements");
    for (int i = 0; i < n; i++) {
        cJSON *g = cJSON_CreateObject();
        cJSON_AddStringToObject(g, "method", row_name(r, &r->rows[gains[i].row]));
        cJSON_AddStringToObject(g, "reference", row_name(r, &r->rows[gains[i].reference]));
        pk_json_number(g, "memory_reduction_pct", gains[i].gain.memory_reduction_pct);
        pk_json_number(g, "speed_improvement_pct", gains[i].gain.speed_improvement_pct);
        const pk_speed_verdict v = pk_speed_judge(&r->rows[gains[i].row].decode_tok_s,
                                                  &r->rows[gains[i].reference].decode_tok_s, &r->load);
        cJSON_AddBoolToObject(g, "speed_significant", v == PK_SPEED_SIGNIFICANT);
        cJSON_AddStringToObject(g, "speed_verdict", pk_speed_verdict_text(v));
        cJSON_AddItemToArray(improvements, g);
    }
    const int best = pk_compare_recommend(r);
    if (best < 0) {
        cJSON_AddNullToObject(o, "recommendation");
    } else {
        const pk_compare_row *w = &r->rows[best];
        cJSON *rec = cJSON_AddObjectToObject(o, "recommendation");
        cJSON_AddStringToObject(rec, "name", row_name(r, w));
        cJSON_AddStringToObject(rec, "press", w->spec);
        cJSON_AddNumberToObject(rec, "context_tokens", w->context_tokens);
        pk_json_number(rec, "kv_reduction_pct", 100 * pk_compare_kv_reduction(r, best));
        pk_json_number(rec, "retrieval_retained", w->retained.retrieval_acc);
        cJSON_AddStringToObject(rec, "mode", mode_name(r));
        if (r->detailed) {
            char kv[32];
            pk_compare_kv_type_text(w, kv, sizeof kv);
            cJSON_AddStringToObject(rec, "kv_type", kv);
            cJSON_AddNumberToObject(rec, "kv_bytes", (double)w->kv_bytes);
            pk_json_number(rec, "ppl_retained", w->retained.ppl);
            const int next = pk_compare_next_rejected(r, best);
            if (next < 0) {
                cJSON_AddNullToObject(rec, "next_rejected");
            } else {
                const pk_compare_row *x = &r->rows[next];
                cJSON *nr = cJSON_AddObjectToObject(rec, "next_rejected");
                pk_compare_kv_type_text(x, kv, sizeof kv);
                cJSON_AddStringToObject(nr, "name", row_name(r, x));
                cJSON_AddStringToObject(nr, "press", x->spec);
                cJSON_AddStringToObject(nr, "kv_type", kv);
                cJSON_AddNumberToObject(nr, "context_tokens", x->context_tokens);
                pk_json_number(nr, "kv_reduction_pct", 100 * pk_compare_kv_reduction(r, next));
                pk_json_number(nr, "retrieval_retained", x->retained.retrieval_acc);
                pk_json_number(nr, "ppl_retained", x->retained.ppl);
            }
        }
    }
    if (r->n_capacity) {
        cJSON *cap = cJSON_AddArrayToObject(o, "capacity");
        for (int m = 0; m < r->n_capacity; m++) {
            const pk_device_capacity *k = &r->capacity[m];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "name", row_name(r, &r->rows[r->main_rows[m]]));
            cJSON_AddNumberToObject(e, "kv_budget_bytes", (double)k->budget_bytes);
            cJSON_AddNumberToObject(e, "kv_bytes_per_sequence", (double)k->per_seq_bytes);
            cJSON_AddNumberToObject(e, "sequences", k->admitted);
            cJSON_AddNumberToObject(e, "sequences_decoded", k->ran);
            cJSON_AddNumberToObject(e, "decode_tok_s", k->decode_tok_s);
            cJSON_AddItemToArray(cap, e);
        }
    }
    cJSON_AddStringToObject(o, "recommendation_rule",
                            "largest KV reduction with retrieval accuracy and perplexity retained >= 0.95 of No Compression");
    if (r->detailed) {
        cJSON *sweeps = cJSON_AddArrayToObject(o, "sweeps");
        for (int i = 0; i < r->n_points; i++) {
            cJSON *p = row_json(r, &r->rows[r->points[i].row]);
            cJSON_AddStringToObject(p, "sweep", pk_sweep_names[r->points[i].sweep]);
            cJSON_AddNumberToObject(p, "x", r->points[i].x);
            char kv[32];
            pk_compare_kv_type_text(&r->rows[r->points[i].row], kv, sizeof kv);
            cJSON_AddStringToObject(p, "kv_type", kv);
            if (r->points[i].sweep == PK_SWEEP_KV_TYPE) {
                pk_json_number(p, "kv_bytes_vs_f32", pk_compare_kv_fraction(r, r->points[i].row, r->f32_row));
                pk_json_number(p, "kv_bytes_vs_f16", pk_compare_kv_fraction(r, r->points[i].row, r->f16_row));
            }
            cJSON_AddItemToArray(sweeps, p);
        }
    }
    return o;
}

/* ---- CSV ---------------------------------------------------------------- */

/* A CSV field, quoted when it holds a comma, a quote or a line break. */
static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* A number as a CSV field; empty when undefined. */
static void csv_number(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, ",%.9g", v);
    else fputc(',', f);
}

/* A median and its spread as three CSV fields. */
static void csv_summary(FILE *f, const pk_summary *s)
{
    csv_number(f, s->median);
    csv_number(f, s->min);
    csv_number(f, s->max);
}

/* One CSV row: the sweep and x ("main" and empty for the main comparison). A
 * detailed run's rows end with the KV type and, on the KV-type sweep, the
 * bytes against No Compression in f32 and in f16 (`kv_row` is the row's index
 * there, -1 elsewhere). */
static void csv_row(FILE *f, const pk_compare_report *r, const char *sweep, double x, const pk_compare_row *w,
                    int kv_row)
{
    csv_field(f, sweep);
    csv_number(f, x);
    fputc(',', f);
    csv_field(f, row_name(r, w));
    fputc(',', f);
    csv_field(f, w->spec);
    fprintf(f, ",%d,%zu,%zu", w->context_tokens, w->kv_bytes, w->kv_bytes_full);
    csv_summary(f, &w->prefill_s);
    csv_summary(f, &w->compression_s);
    csv_summary(f, &w->decode_s);
    csv_summary(f, &w->total_s);
    csv_summary(f, &w->decode_tok_s);
    csv_summary(f, &w->prefill_tok_s);
    const double values[] = {w->quality.retrieval_acc, w->quality.ppl, w->quality.kl, w->quality.top1_agree,
                             w->quality.answer_agree, w->retained.retrieval_acc, w->retained.ppl};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) csv_number(f, values[i]);
    fprintf(f, ",%s", mode_name(r));
    if (r->detailed) {
        char kv[32];
        pk_compare_kv_type_text(w, kv, sizeof kv);
        fprintf(f, ",%s", kv);
        csv_number(f, pk_compare_kv_fraction(r, kv_row, r->f32_row));
        csv_number(f, pk_compare_kv_fraction(r, kv_row, r->f16_row));
    }
    fputc('\n', f);
}

/* The CSV table, built in memory so that it can be written atomically. */
char *pk_report_csv(const pk_compare_report *r)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        pk_fail("csv: cannot open a memory stream: %s", strerror(errno));
        return NULL;
    }
    fputs("sweep,x,name,press,context_tokens,kv_bytes,kv_bytes_full,prefill_s,prefill_s_min,prefill_s_max,"
          "compression_s,compression_s_min,compression_s_max,decode_s,decode_s_min,decode_s_max,total_s,total_s_min,"
          "total_s_max,decode_tok_s,decode_tok_s_min,decode_tok_s_max,prefill_tok_s,prefill_tok_s_min,"
          "prefill_tok_s_max,retrieval_acc,ppl,kl,top1_agree,answer_agree,retrieval_retained,ppl_retained,mode",
          f);
    fputs(r->detailed ? ",kv_type,kv_bytes_vs_f32,kv_bytes_vs_f16\n" : "\n", f);
    for (int m = 0; m < r->n_methods; m++) csv_row(f, r, "main", NAN, &r->rows[r->main_rows[m]], -1);
    for (int i = 0; i < r->n_points; i++) {
        const pk_sweep_point *pt = &r->points[i];
        csv_row(f, r, pk_sweep_names[pt->sweep], pt->x, &r->rows[pt->row],
                pt->sweep == PK_SWEEP_KV_TYPE ? pt->row : -1);
    }
    if (fclose(f) != 0) {
        free(text);
        pk_fail("csv: cannot write the table");
        return NULL;
    }
    return text;
}

/* ---- files -------------------------------------------------------------- */

/* Write text to dir/name and tell the caller. */
static int write_text(const char *dir, const char *name, const char *text,
                      void (*written)(const char *path, void *ctx), void *ctx)
{
    char path[4096];
    if (pk_join_path(path, sizeof path, dir, name) || pk_write_file_atomic(path, text, strlen(text))) return -1;
    if (written) written(path, ctx);
    return 0;
}

/* The three plots of one sweep: KV memory, decode speed and retrieval
 * accuracy against the swept value, one line per method. */
static int write_sweep_plots(const pk_compare_report *r, pk_sweep s, const char *dir,
                             void (*written)(const char *path, void *ctx), void *ctx)
{
    static const char *const x_labels[PK_SWEEP_COUNT] = {"compression ratio", "number of experts",
                                                         "context length (tokens)",
                                                         "KV cache bits per value (f32 32, f16 16, q8_0 8.5, q4_0 4.5)"};
    static const char *const x_titles[PK_SWEEP_COUNT] = {"compression ratio", "number of experts",
                                                         "context length", "KV cache type"};
    static const struct {
        const char *file, *title, *y_label;
    } metrics[] = {
        {"memory", "KV cache held after compression", "KV cache (MiB)"},
        {"decode_speed", "Decode speed", "decode tokens/s (median)"},
        {"retrieval", "Retrieval accuracy", "needle tasks answered right"},
    };
    int n = 0;
    for (int i = 0; i < r->n_points; i++) n += r->points[i].sweep == s;
    if (n == 0) return 0;
    double *x = pk_malloc_array((size_t)n, sizeof *x, "plot"), *y = pk_malloc_array((size_t)n, sizeof *y, "plot");
    pk_svg_series series[PK_COMPARE_MAX_METHODS];
    int rc = x && y ? 0 : -1;
    for (size_t k = 0; k < sizeof metrics / sizeof *metrics && rc == 0; k++) {
        int used = 0, n_series = 0;
        for (int m = 0; m < r->n_methods; m++) {
            series[n_series] = (pk_svg_series){r->methods[m].name, x + used, y + used, 0};
            for (int i = 0; i < r->n_points; i++) {
                const pk_sweep_point *pt = &r->points[i];
                if (pt->sweep != s || pt->method != m) continue;
                const pk_compare_row *w = &r->rows[pt->row];
                x[used] = pt->x;
                y[used] = k == 0 ? w->kv_bytes / MiB : k == 1 ? w->decode_tok_s.median : w->quality.retrieval_acc;
                used++;
                series[n_series].n++;
            }
            if (series[n_series].n) n_series++;
        }
        char title[256], name[64];
        if (s == PK_SWEEP_CONTEXT)
            snprintf(title, sizeof title, "%s vs %s (%s)", metrics[k].title, x_titles[s], mode_name(r));
        else
            snprintf(title, sizeof title, "%s vs %s (%d-token context, %s)", metrics[k].title, x_titles[s],
                     r->context_tokens, mode_name(r));
        snprintf(name, sizeof name, "%s_%s.svg", pk_sweep_names[s], metrics[k].file);
        char *svg = pk_svg_line_chart(title, x_labels[s], metrics[k].y_label, series, n_series);
        rc = svg ? write_text(dir, name, svg, written, ctx) : -1;
        pikv_free(svg);
    }
    pk_free(x);
    pk_free(y);
    return rc;
}

/* Every file of a report directory: JSON, CSV and, for a detailed run, the plots. */
int pk_report_write_dir(const pk_compare_report *r, const char *dir, void (*written)(const char *path, void *ctx),
                        void *ctx)
{
    cJSON *json = pk_report_json(r);
    char *text = json ? cJSON_Print(json) : NULL;
    cJSON_Delete(json);
    if (!text) return pk_fail("compare.json: out of memory");
    int rc = write_text(dir, "compare.json", text, written, ctx);
    cJSON_free(text);
    char *csv = rc ? NULL : pk_report_csv(r);
    rc = csv ? write_text(dir, "compare.csv", csv, written, ctx) : -1;
    pikv_free(csv);
    for (int s = 0; s < PK_SWEEP_COUNT && rc == 0 && r->detailed; s++)
        rc = write_sweep_plots(r, (pk_sweep)s, dir, written, ctx);
    return rc;
}
