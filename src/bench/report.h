/* Writers of a comparison report (bench/compare.h): the text report, laid
 * out as PiKVpress's comparison prints it; one JSON object; CSV with one row
 * per measurement; and the detailed run's files (compare.json, compare.csv
 * and SVG plots) in a directory. */
#ifndef PIKV_BENCH_REPORT_H
#define PIKV_BENCH_REPORT_H

#include "bench/compare.h"

#include <stdio.h>

struct cJSON;

/* The text report: header, each method's memory, time, speed and quality, the
 * summary table, relative improvements, answers, the recommendation, and in a
 * detailed run one table per sweep. */
void pk_report_text(FILE *out, const pk_compare_report *r);

/* The report as a JSON object (free with cJSON_Delete), or NULL when out of
 * memory. Keys: model, machine, threads, context_tokens, question, mode, ...,
 * methods [{name, press, kv_bytes, prefill_s, compression_s, decode_s,
 * decode_tok_s, quality {retrieval_acc, ppl, kl, top1_agree, answer_agree},
 * ...}], improvements, recommendation, and sweeps in a detailed run. Times are
 * medians; KEY_min and KEY_max give their spread. Undefined values are null. */
struct cJSON *pk_report_json(const pk_compare_report *r);

/* CSV: a header, then one row per main method (sweep "main") and one per
 * sweep point. Returns the text (free with pikv_free) or NULL. */
char *pk_report_csv(const pk_compare_report *r);

/* Write compare.json and compare.csv into dir (which must exist) and, in a
 * detailed run, memory, decode speed and retrieval accuracy plots for each
 * sweep: ratio_memory.svg, ratio_decode_speed.svg, ratio_retrieval.svg, and
 * the same for experts_ and context_. `written` (may be NULL) is called with
 * each file's path. */
int pk_report_write_dir(const pk_compare_report *r, const char *dir, void (*written)(const char *path, void *ctx),
                        void *ctx);

#endif
