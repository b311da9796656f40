/* The backend seam: the arithmetic of the forward pass, as one small table of
 * operations. The forward pass (model/forward.c) says *what* to compute, in
 * order; a backend says *how*, on its hardware. The CPU backend
 * (model/backend_cpu.c: OpenBLAS and OpenMP) is the first; another one (a GPU)
 * supplies the same table and leaves the forward pass, the presses, the
 * pipeline and the reports untouched.
 *
 * A product's matrix says its own layout (model/matrix.h): Hugging Face's
 * Conv1D [in, out] for float32 layer weights, [out, in] for 16-bit ones and
 * the LM head. */
#ifndef PIKV_MODEL_BACKEND_H
#define PIKV_MODEL_BACKEND_H

#include "kv/kvcache.h"
#include "model/matrix.h"

#include <stdint.h>

/* Causal attention of T new query rows over every head of one layer. The new
 * tokens' keys and values are already appended to each head, so new row i sees
 * the head's older entries and new rows 0..i (one row into a full ring sees the
 * whole ring); a streaming head further limits each row to its window.
 *
 * With window > 0 the new rows are instead windows of `window` rows (the last
 * may be shorter) that all start at pos0 and never enter the cache: row i sees
 * every entry the head holds and the rows of its own window up to itself,
 * whose keys and values it reads from qkv (f32). Independent continuations of
 * the same cache run this way in one call (a reconstruction's copies). */
typedef struct {
    const pk_kvcache *kv;
    int layer, T;
    int32_t pos0;          /* absolute position of new row 0 */
    const float *qkv;      /* [T, 3C]: row t's query of head h at t * 3C + h * head_dim, its key at
                              C + ..., its value at 2C + ... */
    float *att;            /* [T, C]: the output, heads side by side */
    float scale;
    float *scores;         /* scratch: [n_threads, PK_QUERY_BLOCK, n_positions] */
    float *kv_rows;        /* scratch: [n_head, 2, n_positions, head_dim] for decoded rows; NULL for an f32 cache */
    int n_positions, n_threads;
    int window;            /* 0, or rows per window (pos0 + window <= n_positions) */
    /* Optional (NULL: off): for every new row from max_row0 on, raise
     * max_weights[h][j] to the weight the row gives entry j of head h (slot
     * order, at least the head's length; with window > 0 only the cache's
     * entries): the largest attention each entry receives, as the softmax the
     * output is made of computed it. */
    float *const *max_weights;
    int max_row0;
} pk_attention_args;

/* Queries are processed in blocks of this many rows, so the score buffer stays
 * small however long the prompt is. */
enum { PK_QUERY_BLOCK = 64 };

typedef struct pk_backend {
    const char *name;
    /* Before a forward call: how many threads its products may use. */
    void (*set_threads)(int n_threads);
    /* y[T, out] = beta·y + x[T, in] · W + bias, W in its own type and
     * layout (model/matrix.h; the LM head is wte [V, C], output-major):
     * beta = 1 accumulates (the residual stream), beta = 0 overwrites. */
    void (*matmul)(const pk_matmul_args *a);
    /* out[t] = layernorm(x[t]) * w + b for rows t < T of width C. */
    void (*layernorm)(float *out, const float *x, const float *w, const float *b, int T, int C, float eps,
                      int n_threads);
    /* x = gelu_new(x) over T rows of width n. */
    void (*gelu)(float *x, int T, int n, int n_threads);
    void (*attention)(const pk_attention_args *a);
    /* Attention weights of `rows` queries (Q [rows, head_dim], row stride
     * q_stride, row r at position qpos0 + r) over every entry of one head of
     * kv: out[rows, len], 0 where an entry's position is after the query's.
     * What presses score from (window attention). */
    void (*query_weights)(const pk_kvcache *kv, const pk_kv_head *kh, const float *Q, int q_stride, int rows,
                          int32_t qpos0, float scale, float *out);
} pk_backend;

extern const pk_backend pk_backend_cpu;

/* For the CPU-only attention variants of the engine (query-time routing,
 * placed workers): give the entries start..start+width-1 of a streaming head
 * that a query at qpos may not see a score whose softmax weight is 0. */
void pk_mask_window(const pk_kv_head *kh, float *row, int start, int width, int32_t qpos);

/* For the same variants, one query q over entries start..start+count-1 of a
 * head, in whatever type the cache stores: S[j] = q · key(start + j), and
 * out[head_dim] = sum_j S[j] value(start + j). */
void pk_key_scores(const pk_kvcache *kv, const pk_kv_head *kh, int start, int count, const float *q, float *S);
void pk_weighted_values(const pk_kvcache *kv, const pk_kv_head *kh, int start, int count, const float *S,
                        float *out);

#endif
