/* A session: one sequence being run through a model, its KV cache and the
 * scratch memory of the forward pass. */
#ifndef PIKV_MODEL_SESSION_H
#define PIKV_MODEL_SESSION_H

#include "kv/kvcache.h"
#include "model/model.h"

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
};

/* Queries are processed in blocks of this many rows, so the score buffer stays
 * small however long the prompt is. */
enum { PK_QUERY_BLOCK = 64 };

#endif
