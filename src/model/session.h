/* A session: one sequence being run through a model, its KV cache and the
 * scratch memory of the forward pass. */
#ifndef PIKV_MODEL_SESSION_H
#define PIKV_MODEL_SESSION_H

#include "kv/kvcache.h"
#include "kv/placement.h"
#include "model/model.h"
#include "press/press.h"

struct pikv_session {
    const pikv_model *model;
    pk_kvcache kv;
    int pos;           /* absolute position of the next token */
    int n_threads;

    /* Scratch for a forward call of up to `rows` tokens. */
    int rows;
    float *x;          /* [rows, C] residual stream */
    float *xn;         /* [rows, C] layer-normed input of the current sub-block */
    float *qkv;        /* [rows, 3C] */
    float *att;        /* [rows, C] attention output, heads side by side */
    float *fc;         /* [rows, F] MLP hidden */
    float *scores;     /* [n_threads, PK_QUERY_BLOCK, n_positions] attention rows */

    pk_press *compressing;  /* compresses each layer during the current call */
    pk_press *attached;     /* acts after each layer of every call (decoding presses) */
    struct pk_route_table *routing;  /* route=1: the table later queries are routed through */
    int *route_idx;         /* [n_threads, n_positions]: the entries one routed query reads */
    pikv_press_stats stats;

    /* Decode attention on placed workers (pikv_session_set_workers). */
    int workers;                 /* 0: heads in parallel, unplaced */
    pk_place_policy placement;
    pk_placement plan;
    float *worker_scores;        /* [workers, n_positions] */
    int *head_len;               /* [n_head]: one layer's head lengths, to place */
    float *partials;             /* per work item: max, sum, then head_dim weighted values */
    int cap_partials;
    double imbalance_sum;        /* sum over placed layer steps of max/mean worker load */
    long imbalance_steps;

    int marked, mark_pos;   /* pikv_session_mark: the cache's state and epoch */
    pk_kv_snapshot mark;
    unsigned mark_epoch;
};

/* Like pikv_forward, but write the final hidden states (after ln_f) of every
 * row to hidden [n, C] instead of logits. */
int pk_forward_hidden(pikv_session *s, const int32_t *ids, int n, float *hidden);

/* Release the activation buffers (the session's scratch). */
void pk_session_free_scratch(pikv_session *s);

/* Queries are processed in blocks of this many rows, so the score buffer stays
 * small however long the prompt is. */
enum { PK_QUERY_BLOCK = 64 };

#endif
