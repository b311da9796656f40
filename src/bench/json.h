/* Measurements as JSON (cJSON): numbers that may be undefined, and summaries
 * of repeated measurements, in the two layouts the reports use. */
#ifndef PIKV_BENCH_JSON_H
#define PIKV_BENCH_JSON_H

#include "bench/stats.h"

struct cJSON;

/* Add key: v to an object, or key: null when v is not finite (JSON has no NaN). */
void pk_json_number(struct cJSON *o, const char *key, double v);

typedef enum {
    PK_SUMMARY_NESTED,  /* key: {"median": m, "min": a, "max": b} (pikv bench) */
    PK_SUMMARY_FLAT     /* key: m, key_min: a, key_max: b (pikv compare) */
} pk_summary_layout;

/* Add a summary's median and spread to an object under key. */
void pk_json_summary(struct cJSON *o, const char *key, const pk_summary *s, pk_summary_layout layout);

#endif
