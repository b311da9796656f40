/* The GPT-2 forward pass over a KV cache, and the state it runs in.
 *
 * One call runs T new tokens (a prompt, a question, or one decoded token) at
 * absolute positions pos..pos+T-1. Each layer appends the new keys and values
 * to every head's cache, then the new queries attend to everything that head
 * holds: its earlier entries (possibly compressed) and the new tokens up to
 * and including their own position.
 *
 * The pass knows nothing of presses, routing or workers: the layer above
 * (engine/) reaches in through two hooks, one that may replace a layer's
 * attention and one that runs right after it, while the layer's attention has
 * just used the full cache. */
#ifndef PIKV_MODEL_FORWARD_H
#define PIKV_MODEL_FORWARD_H

#include "kv/kvcache.h"
#include "model/backend.h"
#include "model/model.h"

/* The state of one sequence's forward pass: its cache, its position, and the
 * scratch memory of the activations. */
typedef struct pk_forward {
    const pikv_model *model;
    const pk_backend *backend;
    pk_kvcache kv;
    int pos;           /* absolute position of the next token */
    int window;        /* during pk_forward_run_windows: its rows per window; else 0 */
    int n_threads;
    /* Scratch for a call of up to `rows` tokens. */
    int rows;
    float *x;          /* [rows, C] residual stream */
    float *xn;         /* [rows, C] layer-normed input of the current sub-block */
    float *qkv;        /* [rows, 3C] */
    float *att;        /* [rows, C] attention output, heads side by side */
    float *fc;         /* [rows, F] MLP hidden */
    float *scores;     /* [n_threads, PK_QUERY_BLOCK, n_positions] attention rows */
    float *panels;     /* [n_threads, PK_PANEL_FLOATS] widened weights; NULL for float32 weights */
    float *kv_rows;    /* [n_head, 2, n_positions, head_dim]: one layer's keys and values decoded for the
                          attention of a multi-token call; NULL when the cache stores f32 */
} pk_forward;

typedef struct {
    /* Compute the attention of layer's T new rows into f->att instead of the
     * backend's attention: 1 when done, 0 to leave it to the backend, -1 on
     * error. NULL: always the backend. */
    int (*attention)(void *ctx, pk_forward *f, int layer, int T);
    /* After the layer's attention (f->qkv holds its queries): -1 stops the call. */
    int (*after_attention)(void *ctx, pk_forward *f, int layer, int T);
    void *ctx;
} pk_forward_hooks;

/* The backend's attention arguments for layer's T new rows of f (optional
 * parts off): what the forward pass runs, and what a hook that adds to it
 * starts from. */
pk_attention_args pk_forward_attention_args(const pk_forward *f, int layer, int T);

/* A forward state whose cache stores keys and values in the given types. */
int pk_forward_init(pk_forward *f, const pikv_model *m, int n_threads, pikv_kv_type type_k, pikv_kv_type type_v);
void pk_forward_free(pk_forward *f);
/* Release the activation buffers (they grow again on the next call). */
void pk_forward_free_scratch(pk_forward *f);

/* Run n tokens through every block (hooks may be NULL), leaving the final
 * residual stream of each row in f->x and advancing f->pos. */
int pk_forward_run(pk_forward *f, const int32_t *ids, int n, const pk_forward_hooks *hooks);
/* Run n tokens as windows of `window` tokens that each continue the cache
 * from f->pos on their own (row t at position f->pos + t % window): every
 * window sees the cache and its own earlier rows, never the other windows;
 * the cache and f->pos are left as they were. The run is for what the hooks
 * see of its attention: the last block stops there, so f->x holds no hidden
 * states. */
int pk_forward_run_windows(pk_forward *f, const int32_t *ids, int n, int window, const pk_forward_hooks *hooks);
/* After pk_forward_run of n rows: the logits of the last row ([vocab]) or of
 * every row ([n, vocab]). */
void pk_forward_logits(pk_forward *f, int n, float *logits, int all_rows);
/* After pk_forward_run of n rows: the final hidden states (after ln_f) [n, C]. */
void pk_forward_hidden_states(pk_forward *f, int n, float *hidden);

#endif
