/* DuoAttention head patterns, in DuoAttention's own file format: a directory
 * holding full_attention_heads.tsv (one row per layer, tab-separated gate
 * values alpha in [0, 1] per head; high = the head needs the full context) and
 * config.json (sink_size, recent_size: the streaming window the gates were
 * trained or calibrated for). */
#ifndef PIKV_PRESS_DUO_PATTERN_H
#define PIKV_PRESS_DUO_PATTERN_H

#include <stddef.h>

typedef struct {
    int n_layer, n_head;
    float *alpha;        /* [n_layer * n_head], clipped to [0, 1] */
    int sink, recent;    /* from config.json */
} pk_duo_pattern;

/* Parse the text of a full_attention_heads.tsv (name only for messages). */
int pk_duo_pattern_parse(const char *text, size_t len, const char *name, pk_duo_pattern *p);
/* Load DIR/full_attention_heads.tsv and DIR/config.json. */
int pk_duo_pattern_load(const char *dir, pk_duo_pattern *p);
/* Write both files into dir (created if missing), each atomically. */
int pk_duo_pattern_save(const char *dir, const pk_duo_pattern *p);
void pk_duo_pattern_free(pk_duo_pattern *p);

/* The heads that stream at a head ratio: the round(ratio * heads) lowest
 * alphas, ties broken by layer then head; streaming[i] = 1 for those. */
int pk_duo_pattern_select(const pk_duo_pattern *p, double ratio, unsigned char *streaming);

#endif
