/* The CPU backend: OpenBLAS for the float32 matrix products (sgemm for blocks
 * of rows, sgemv for one token), model/matrix.c for 16-bit weights, OpenMP
 * across rows and across (head, query block) attention items, and the
 * element-wise kernels of model/ops.c. */
#include "model/backend.h"
#include "model/ops.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

static void cpu_set_threads(int n_threads) { openblas_set_num_threads(n_threads); }

/* Float32 weights go to OpenBLAS (sgemv for one row, sgemm for more, W in
 * either layout), the bias added where it always was: into the residual
 * before accumulating, after the product when overwriting. 16-bit weights go
 * to model/matrix.c. */
static void cpu_matmul(const pk_matmul_args *a)
{
    if (a->W->type != PK_DT_F32) {
        pk_matmul_half(a);
        return;
    }
    const float *W = a->W->data;
    const int in_major = a->W->layout == PK_IN_MAJOR;
    if (a->bias && a->beta != 0) pk_add_bias(a->y, a->bias, a->T, a->out);
    if (a->T == 1 && in_major)
        cblas_sgemv(CblasRowMajor, CblasTrans, a->in, a->out, 1.f, W, a->out, a->x, 1, a->beta, a->y, 1);
    else if (a->T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, a->out, a->in, 1.f, W, a->in, a->x, 1, a->beta, a->y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, in_major ? CblasNoTrans : CblasTrans, a->T, a->out, a->in, 1.f, a->x,
                    a->in, W, in_major ? a->out : a->in, a->beta, a->y, a->out);
    if (a->bias && a->beta == 0) pk_add_bias(a->y, a->bias, a->T, a->out);
}

static void cpu_layernorm(float *out, const float *x, const float *w, const float *b, int T, int C, float eps,
                          int n_threads)
{
#pragma omp parallel for num_threads(n_threads) if (T > 1)
    for (int t = 0; t < T; t++) pk_layernorm(out + (size_t)t * C, x + (size_t)t * C, w, b, C, eps);
}

static void cpu_gelu(float *x, int T, int n, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) if (T > 1)
    for (int t = 0; t < T; t++) pk_gelu(x + (size_t)t * n, (size_t)n);
}

/* Entries outside a streaming head's window get a score that underflows to a
 * zero weight in the softmax (a finite value: the softmax runs with
 * -ffast-math, where infinities are not honoured). */
#define MASKED_SCORE (-1e30f)

/* Blank out the entries start..start+width-1 of a streaming head that a query
 * at qpos may not see (row[0] is entry `start`). */
void pk_mask_window(const pk_kv_head *kh, float *row, int start, int width, int32_t qpos)
{
    if (kh->recent == 0) return;
    for (int j = 0; j < width; j++)
        if (!pk_kv_in_window(kh, start + j, qpos)) row[j] = MASKED_SCORE;
}

/* Entries start..start+count-1 of a head times a vector: for keys
 * (values == 0) out[j] = K[start + j] · in, for values out = sum over j of
 * in[j] · V[start + j]. f32 rows go to sgemv in place; rows of another type
 * to the codec's products over a run of rows (kv/kv_type.h), which widen
 * each stored value in registers where it is used, four keys' sums reduced
 * together and 64 values' sums held in registers over all the rows. (They
 * replaced decoding 16 KiB of rows onto the stack for sgemv: on the bundled
 * model, f16 weights and cache, decode went from 961 to 1,146 tok/s at 1,024
 * context and from 503 to 805 at 1,990, medians of 5 interleaved rounds on 2
 * threads.) */
static void head_product(const pk_kvcache *kv, const pk_kv_head *kh, int values, int start, int count, const float *in,
                         float *out)
{
    const int hd = kv->head_dim;
    if (pk_kv_is_f32(kv, values)) {
        cblas_sgemv(CblasRowMajor, values ? CblasTrans : CblasNoTrans, count, hd, 1.f,
                    pk_kv_f32_rows(kh, values) + (size_t)start * hd, hd, in, 1, 0.f, out, 1);
        return;
    }
    const void *rows = pk_kv_row(kv, kh, values, start);
    if (!values) {
        pk_kv_rows_dot(kv->type_k, rows, count, in, hd, out);
        return;
    }
    memset(out, 0, (size_t)hd * sizeof *out);
    pk_kv_rows_axpy(kv->type_v, rows, count, in, hd, out);
}

void pk_key_scores(const pk_kvcache *kv, const pk_kv_head *kh, int start, int count, const float *q, float *S)
{
    head_product(kv, kh, 0, start, count, q, S);
}

void pk_weighted_values(const pk_kvcache *kv, const pk_kv_head *kh, int start, int count, const float *S, float *out)
{
    head_product(kv, kh, 1, start, count, S, out);
}

/* Where head h's keys (values != 0: values) are decoded to in kv_rows. */
static float *decoded_rows(const pk_attention_args *a, int h, int values)
{
    return a->kv_rows + (size_t)(2 * h + values) * (size_t)a->n_positions * (size_t)a->kv->head_dim;
}

/* Head h's keys (values != 0: values) as f32 rows for the matrix products of
 * a multi-token call: in place, or as decode_layer left them. */
static const float *layer_rows(const pk_attention_args *a, int h, int values)
{
    if (pk_kv_is_f32(a->kv, values)) return pk_kv_f32_rows(pk_kv_head_at(a->kv, a->layer, h), values);
    return decoded_rows(a, h, values);
}

/* Decode every head's keys and values that are not stored as f32 into
 * kv_rows, once per layer, so that all query blocks of a head share them. */
static void decode_layer(const pk_attention_args *a)
{
#pragma omp parallel for num_threads(a->n_threads)
    for (int i = 0; i < 2 * a->kv->n_head; i++) {
        const int h = i / 2, values = i % 2;
        const pk_kv_head *kh = pk_kv_head_at(a->kv, a->layer, h);
        if (!pk_kv_is_f32(a->kv, values)) pk_kv_read(a->kv, kh, values, 0, kh->len, decoded_rows(a, h, values));
    }
}

/* Raise max[j] to row[j] for the first n entries. */
static void raise_to(float *max, const float *row, int n)
{
    for (int j = 0; j < n; j++)
        if (row[j] > max[j]) max[j] = row[j];
}

/* Head h's attention for the call's rows r0..r0+rows-1, in S (this thread's
 * scores). One query row reads the stored rows directly; a block of rows
 * multiplies f32 rows (decoded first when the cache stores another type). */
static void attend_rows(const pk_attention_args *a, int h, int r0, int rows, float *S)
{
    const pk_kvcache *kv = a->kv;
    const int hd = kv->head_dim, C = kv->n_head * hd;
    const pk_kv_head *kh = pk_kv_head_at(kv, a->layer, h);
    const int old = kh->len - a->T, width = old + r0 + rows;
    const float *Q = a->qkv + (size_t)r0 * 3 * (size_t)C + (size_t)h * (size_t)hd;
    float *out = a->att + (size_t)r0 * (size_t)C + (size_t)h * (size_t)hd;
    float *max = a->max_weights ? a->max_weights[h] : NULL;
    if (rows == 1) {
        pk_key_scores(kv, kh, 0, width, Q, S);
        pk_mask_window(kh, S, 0, width, a->pos0 + r0);
        pk_softmax(S, width, a->scale);
        if (max && r0 >= a->max_row0) raise_to(max, S, width);
        pk_weighted_values(kv, kh, 0, width, S, out);
        return;
    }
    /* S[rows, width] = Q[rows, hd] · K[width, hd]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, width, hd, 1.f, Q, 3 * C, layer_rows(a, h, 0), hd, 0.f,
                S, width);
    for (int i = 0; i < rows; i++) {
        float *row = S + (size_t)i * (size_t)width;
        int visible = old + r0 + i + 1;
        pk_mask_window(kh, row, 0, visible, a->pos0 + r0 + i);
        pk_softmax(row, visible, a->scale);
        if (max && r0 + i >= a->max_row0) raise_to(max, row, visible);
        memset(row + visible, 0, (size_t)(width - visible) * sizeof(float));
    }
    /* out[rows, hd] = P[rows, width] · V[width, hd] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, width, 1.f, S, width, layer_rows(a, h, 1), hd,
                0.f, out, C);
}

/* The products of rows r0..r0+rows-1 (a->window > 0) with their own
 * windows' rows, read from qkv, one per window the block touches: for keys
 * (values == 0) S[i, held + j] = Q_i · K_own[j]; for values out_i += the
 * weights S[i, held..] times V_own (out_i overwritten when nothing is
 * held). Row s of a
 * window that starts at row w0 reaches own rows w0..s. */
static void own_window_products(const pk_attention_args *a, int h, int r0, int rows, int held, int values, float *S,
                                int width)
{
    const int hd = a->kv->head_dim, C = a->kv->n_head * hd, ld = 3 * C, window = a->window, stop = r0 + rows;
    for (int s0 = r0, end; s0 < stop; s0 = end) {
        const int w0 = s0 - s0 % window;
        end = w0 + window < stop ? w0 + window : stop;
        const float *own = a->qkv + (size_t)w0 * (size_t)ld + (size_t)(values ? 2 * C : C) + (size_t)h * (size_t)hd;
        const float *Q = a->qkv + (size_t)s0 * (size_t)ld + (size_t)h * (size_t)hd;
        float *S_rows = S + (size_t)(s0 - r0) * (size_t)width + held;
        if (!values)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, end - s0, end - w0, hd, 1.f, Q, ld, own, ld, 0.f,
                        S_rows, width);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, end - s0, hd, end - w0, 1.f, S_rows, width, own, ld,
                        held ? 1.f : 0.f, a->att + (size_t)s0 * (size_t)C + (size_t)h * (size_t)hd, C);
    }
}

/* The same with a->window > 0 for rows r0..r0+rows-1, which may span
 * several windows: the keys of row r are the head's `held` entries, shared by
 * every window (one product for the block), followed by its own window's rows
 * from the window's first row to r, read from qkv (one product per window the
 * block touches). S's rows are held + window wide. */
static void attend_window_rows(const pk_attention_args *a, int h, int r0, int rows, float *S)
{
    const pk_kvcache *kv = a->kv;
    const int hd = kv->head_dim, C = kv->n_head * hd, ld = 3 * C, window = a->window;
    const pk_kv_head *kh = pk_kv_head_at(kv, a->layer, h);
    const int held = kh->len, width = held + window;
    const float *Q = a->qkv + (size_t)r0 * (size_t)ld + (size_t)h * (size_t)hd;
    float *out = a->att + (size_t)r0 * (size_t)C + (size_t)h * (size_t)hd;
    float *max = a->max_weights ? a->max_weights[h] : NULL;
    /* S[rows, 0..held) = Q · K_held^T, then the own windows' keys */
    if (held)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, held, hd, 1.f, Q, ld, layer_rows(a, h, 0), hd, 0.f,
                    S, width);
    own_window_products(a, h, r0, rows, held, 0, S, width);
    for (int i = 0; i < rows; i++) {
        float *row = S + (size_t)i * (size_t)width;
        const int in_window = (r0 + i) % window, visible = held + in_window + 1;
        pk_mask_window(kh, row, 0, held, a->pos0 + in_window);
        pk_softmax(row, visible, a->scale);
        if (max && r0 + i >= a->max_row0) raise_to(max, row, held);
        memset(row + visible, 0, (size_t)(width - visible) * sizeof(float));
    }
    /* out[rows, hd] = P[rows, 0..held) · V_held, then += P_own · V_own per window */
    if (held)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, held, 1.f, S, width, layer_rows(a, h, 1), hd,
                    0.f, out, C);
    own_window_products(a, h, r0, rows, held, 1, S, width);
}

/* Work items are (head, block of query rows), shared out dynamically. When
 * the largest weights are recorded, a head's blocks stay in one item, since
 * they raise the same buffer. */
static void cpu_attention(const pk_attention_args *a)
{
    const int n_head = a->kv->n_head, T = a->T;
    const int n_blocks = (T + PK_QUERY_BLOCK - 1) / PK_QUERY_BLOCK;
    const int items_per_head = a->max_weights ? 1 : n_blocks, blocks_per_item = n_blocks / items_per_head;
    const size_t score_stride = (size_t)PK_QUERY_BLOCK * (size_t)a->n_positions;
    if ((T > 1 || a->window) && a->kv_rows) decode_layer(a);

#pragma omp parallel for schedule(dynamic) num_threads(a->n_threads)
    for (int item = 0; item < n_head * items_per_head; item++) {
        const int h = item / items_per_head, b0 = (item % items_per_head) * blocks_per_item;
        float *S = a->scores + (size_t)omp_get_thread_num() * score_stride;
        for (int b = b0; b < b0 + blocks_per_item; b++) {
            const int r0 = b * PK_QUERY_BLOCK, rows = T - r0 < PK_QUERY_BLOCK ? T - r0 : PK_QUERY_BLOCK;
            if (a->window)
                attend_window_rows(a, h, r0, rows, S);
            else
                attend_rows(a, h, r0, rows, S);
        }
    }
}

/* Keys of a type other than f32 are decoded a chunk at a time into a buffer
 * on the stack (16 KiB, in the first-level cache) and multiplied there by all
 * the query rows at once. */
enum { CHUNK_FLOATS = 4096 };

/* The weights of a few query rows: one product over f32 keys; keys of
 * another type decoded a chunk at a time, each chunk multiplied by all the
 * rows; rows wider than the chunk each against the stored keys. */
static void cpu_query_weights(const pk_kvcache *kv, const pk_kv_head *kh, const float *Q, int q_stride, int rows,
                              int32_t qpos0, float scale, float *out)
{
    const int n = kh->len, hd = kv->head_dim;
    /* out[rows, n] = Q[rows, hd] · K[n, hd]^T */
    if (pk_kv_is_f32(kv, 0)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hd, 1.f, Q, q_stride, pk_kv_f32_rows(kh, 0), hd,
                    0.f, out, n);
    } else if (hd > CHUNK_FLOATS) {
        for (int r = 0; r < rows; r++)
            pk_key_scores(kv, kh, 0, n, Q + (size_t)r * (size_t)q_stride, out + (size_t)r * (size_t)n);
    } else {
        float keys[CHUNK_FLOATS];
        const int chunk = CHUNK_FLOATS / hd;
        for (int j = 0; j < n; j += chunk) {
            const int m = n - j < chunk ? n - j : chunk;
            pk_kv_read(kv, kh, 0, j, m, keys);
            /* out[rows, j..j+m) = Q[rows, hd] · keys[m, hd]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, m, hd, 1.f, Q, q_stride, keys, hd, 0.f, out + j,
                        n);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *row = out + (size_t)r * (size_t)n;
        for (int j = 0; j < n; j++)
            if (kh->pos[j] > qpos0 + r) row[j] = MASKED_SCORE;
        pk_softmax(row, n, scale);
    }
}

const pk_backend pk_backend_cpu = {
    .name = "cpu",
    .set_threads = cpu_set_threads,
    .matmul = cpu_matmul,
    .layernorm = cpu_layernorm,
    .gelu = cpu_gelu,
    .attention = cpu_attention,
    .query_weights = cpu_query_weights,
};
