/* Calibrating DuoAttention's head pattern without training.
 *
 * DuoAttention optimises a gate per head that mixes full and streaming
 * attention, minimising how far the answer positions' final hidden states move
 * (plus an L1 push towards streaming). This calibration measures that quantity
 * directly, one head at a time: on synthetic needle tasks, prefill the context
 * with full attention once, then for each head answer (teacher-forced) with
 * that head alone limited to sink + recent, and record the relative change of
 * the final hidden states at the positions that predict the answer. Heads
 * whose ablation moves them least are the streaming candidates. */
#ifndef PIKV_EVAL_DUO_CALIBRATE_H
#define PIKV_EVAL_DUO_CALIBRATE_H

#include "eval/tasks.h"
#include "press/duo_pattern.h"

typedef struct {
    int samples;                 /* needle tasks (default 16) */
    int min_tokens, max_tokens;  /* their context lengths */
    int sink, recent;            /* the streaming window to calibrate for */
    uint64_t seed;
} pk_duo_calibration;

/* Score every head; the pattern's alpha is the mean relative hidden-state
 * change divided by the largest one (so in [0, 1], 1 = most retrieval-like). */
int pk_duo_calibrate(pikv_session *s, const pk_haystack *h, const pk_duo_calibration *c,
                     void (*progress)(int done, int total, void *ctx), void *ctx, pk_duo_pattern *out);

#endif
