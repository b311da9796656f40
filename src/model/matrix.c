/* Products by 16-bit weight matrices (see model/matrix.h). */
#include "model/matrix.h"
#include "util/half.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define HALF_SIMD 1
#else
#define HALF_SIMD 0
#endif

/* The in-major matrix-vector kernel gives each thread tiles of this many
 * output columns: eight AVX registers of accumulators. */
enum { TILE = 64 };

size_t pk_matrix_elem_size(pk_dtype type) { return type == PK_DT_F32 ? 4 : 2; }

static float half_to_f32(uint16_t h, pk_dtype type) { return type == PK_DT_F16 ? pk_f16_to_f32(h) : pk_bf16_to_f32(h); }

#if HALF_SIMD
/* Eight consecutive 16-bit elements widened to float32: F16C's conversion,
 * or for BF16 the bits moved to the top of each 32-bit lane. */
static inline __attribute__((always_inline)) __m256 load8(const uint16_t *p, pk_dtype type)
{
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (type == PK_DT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

void pk_matrix_to_f32(const pk_matrix *w, size_t first, size_t n, float *out)
{
    if (w->type == PK_DT_F32) {
        memcpy(out, (const float *)w->data + first, n * sizeof(float));
        return;
    }
    const uint16_t *p = (const uint16_t *)w->data + first;
    if (w->type == PK_DT_F16) pk_f16_to_f32_n(p, out, n);
    else pk_bf16_to_f32_n(p, out, n);
}

/* What outputs c0..c0+w-1 of row t start from before the products are added:
 * beta·y (never reading y when beta is 0) plus the bias. */
static void start_outputs(const pk_matmul_args *a, int t, int c0, int w, float *dst)
{
    const float *y = a->y + (size_t)t * (size_t)a->out + c0;
    for (int j = 0; j < w; j++) dst[j] = (a->beta != 0 ? a->beta * y[j] : 0.f) + (a->bias ? a->bias[c0 + j] : 0.f);
}

/* Columns c0..c0+w-1 (w <= TILE) of row t of y = x · W[in, out], in plain C:
 * one row of W widened at a time and added in. */
static void tile_plain(const pk_matmul_args *a, int t, int c0, int w)
{
    float acc[TILE], row[TILE];
    const float *x = a->x + (size_t)t * (size_t)a->in;
    start_outputs(a, t, c0, w, acc);
    for (int i = 0; i < a->in; i++) {
        pk_matrix_to_f32(a->W, (size_t)i * (size_t)a->out + (size_t)c0, (size_t)w, row);
        for (int j = 0; j < w; j++) acc[j] += x[i] * row[j];
    }
    memcpy(a->y + (size_t)t * (size_t)a->out + c0, acc, (size_t)w * sizeof(float));
}

#if HALF_SIMD
/* The same for 8·n_acc columns (n_acc 1 or 8, a constant where it is
 * inlined), the accumulators held in registers for the whole pass down W. */
static inline __attribute__((always_inline)) void tile_simd(const pk_matmul_args *a, int t, int c0, int n_acc,
                                                            pk_dtype type)
{
    float start[TILE];
    __m256 acc[TILE / 8];
    const float *x = a->x + (size_t)t * (size_t)a->in;
    const uint16_t *W = (const uint16_t *)a->W->data + c0;
    start_outputs(a, t, c0, 8 * n_acc, start);
    for (int j = 0; j < n_acc; j++) acc[j] = _mm256_loadu_ps(start + 8 * j);
    for (int i = 0; i < a->in; i++) {
        const __m256 xi = _mm256_set1_ps(x[i]);
        const uint16_t *row = W + (size_t)i * (size_t)a->out;
        for (int j = 0; j < n_acc; j++) acc[j] = _mm256_fmadd_ps(load8(row + 8 * j, type), xi, acc[j]);
    }
    float *y = a->y + (size_t)t * (size_t)a->out + c0;
    for (int j = 0; j < n_acc; j++) _mm256_storeu_ps(y + 8 * j, acc[j]);
}

/* One tile: all TILE columns in registers, or for the last, narrower tile
 * eight columns at a time and what is left over in plain C. */
static void tile(const pk_matmul_args *a, int t, int c0, int w)
{
    const pk_dtype type = a->W->type;
    if (w == TILE) {
        if (type == PK_DT_F16) tile_simd(a, t, c0, TILE / 8, PK_DT_F16);
        else tile_simd(a, t, c0, TILE / 8, PK_DT_BF16);
        return;
    }
    int done = 0;
    for (; done + 8 <= w; done += 8) {
        if (type == PK_DT_F16) tile_simd(a, t, c0 + done, 1, PK_DT_F16);
        else tile_simd(a, t, c0 + done, 1, PK_DT_BF16);
    }
    if (done < w) tile_plain(a, t, c0 + done, w - done);
}
#else
static void tile(const pk_matmul_args *a, int t, int c0, int w) { tile_plain(a, t, c0, w); }
#endif

/* y = x · W for W[in, out] and a few rows: threads share out tiles of output
 * columns; each tile walks down W once per row, which for the second row
 * onwards is still in cache. */
static void matvec_in_major(const pk_matmul_args *a)
{
    const int n_tiles = (a->out + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(a->n_threads) if (n_tiles > 1)
    for (int k = 0; k < n_tiles; k++) {
        const int c0 = k * TILE, w = a->out - c0 < TILE ? a->out - c0 : TILE;
        for (int t = 0; t < a->T; t++) tile(a, t, c0, w);
    }
}

#if HALF_SIMD
/* x[0..n) · row[0..n) for n a multiple of 8, four accumulators deep (type a
 * constant where it is inlined). */
static inline __attribute__((always_inline)) float dot_simd(const uint16_t *row, const float *x, int n, pk_dtype type)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(load8(row + i, type), _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(load8(row + i + 8, type), _mm256_loadu_ps(x + i + 8), s1);
        s2 = _mm256_fmadd_ps(load8(row + i + 16, type), _mm256_loadu_ps(x + i + 16), s2);
        s3 = _mm256_fmadd_ps(load8(row + i + 24, type), _mm256_loadu_ps(x + i + 24), s3);
    }
    for (; i < n; i += 8) s0 = _mm256_fmadd_ps(load8(row + i, type), _mm256_loadu_ps(x + i), s0);
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
#endif

/* Dot product of x[in] with row r of a 16-bit W[out, in]. */
static float dot_row(const pk_matmul_args *a, const float *x, int r)
{
    const int n = a->in;
    const uint16_t *row = (const uint16_t *)a->W->data + (size_t)r * (size_t)n;
    float sum = 0;
    int i = 0;
#if HALF_SIMD
    i = n / 8 * 8;
    sum = a->W->type == PK_DT_F16 ? dot_simd(row, x, i, PK_DT_F16) : dot_simd(row, x, i, PK_DT_BF16);
#endif
    for (; i < n; i++) sum += x[i] * half_to_f32(row[i], a->W->type);
    return sum;
}

/* y = x · W^T for W[out, in] and a few rows (the LM head while decoding):
 * threads share out the rows of W, each a dot product per row of x. */
static void matvec_out_major(const pk_matmul_args *a)
{
#pragma omp parallel for schedule(static) num_threads(a->n_threads)
    for (int r = 0; r < a->out; r++)
        for (int t = 0; t < a->T; t++) {
            float start;
            start_outputs(a, t, r, 1, &start);
            a->y[(size_t)t * (size_t)a->out + (size_t)r] = start + dot_row(a, a->x + (size_t)t * (size_t)a->in, r);
        }
}

/* Many rows: panels of output columns shared out among the threads; each
 * thread widens its panel PK_PANEL_DEPTH rows of the inner dimension at a time
 * into its own scratch and adds that block's product in with a one-thread
 * sgemm (OpenBLAS's OpenMP build does not spawn threads inside ours). A
 * widened element is used by all T rows, so widening costs 1/T of the
 * multiply-adds. The panels are as many as a multiple of the threads, so that
 * each thread gets the same share. */
static void matmul_panels(const pk_matmul_args *a, pk_matrix_layout layout)
{
    const int T = a->T, in = a->in, out = a->out;
    int n_panels = (out + PK_PANEL_WIDTH - 1) / PK_PANEL_WIDTH;
    n_panels = (n_panels + a->n_threads - 1) / a->n_threads * a->n_threads;
    const int width = ((out + n_panels - 1) / n_panels + 15) / 16 * 16; /* <= PK_PANEL_WIDTH */
    n_panels = (out + width - 1) / width;
#pragma omp parallel for schedule(dynamic) num_threads(a->n_threads)
    for (int p = 0; p < n_panels; p++) {
        float *block = a->panels + (size_t)omp_get_thread_num() * PK_PANEL_FLOATS;
        const int c0 = p * width, w = out - c0 < width ? out - c0 : width;
        for (int t = 0; t < T; t++) start_outputs(a, t, c0, w, a->y + (size_t)t * (size_t)out + c0);
        for (int k0 = 0; k0 < in; k0 += PK_PANEL_DEPTH) {
            const int d = in - k0 < PK_PANEL_DEPTH ? in - k0 : PK_PANEL_DEPTH;
            if (layout == PK_IN_MAJOR) { /* block [d, w] of W[in, out] */
                for (int k = 0; k < d; k++)
                    pk_matrix_to_f32(a->W, (size_t)(k0 + k) * (size_t)out + (size_t)c0, (size_t)w,
                                     block + (size_t)k * (size_t)w);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, w, d, 1.f, a->x + k0, in, block, w, 1.f,
                            a->y + c0, out);
            } else { /* block [w, d] of W[out, in] */
                for (int j = 0; j < w; j++)
                    pk_matrix_to_f32(a->W, (size_t)(c0 + j) * (size_t)in + (size_t)k0, (size_t)d,
                                     block + (size_t)j * (size_t)d);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, w, d, 1.f, a->x + k0, in, block, d, 1.f,
                            a->y + c0, out);
            }
        }
    }
}

void pk_matmul_half(const pk_matmul_args *a, pk_matrix_layout layout)
{
    if (a->T > PK_MATVEC_MAX_ROWS) matmul_panels(a, layout);
    else if (layout == PK_IN_MAJOR) matvec_in_major(a);
    else matvec_out_major(a);
}
