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

/* y = x · W^T for W[out, in] and a few rows (decoding): threads share out
 * the rows of W in contiguous runs, each a dot product per row of x, so that
 * every thread streams through its part of the matrix once, in order. */
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

/* Many rows: panels of outputs shared out among the threads; each thread
 * widens its panel PK_PANEL_DEPTH elements of the inner dimension at a time
 * (block [w, d] of W[out, in]) into its own scratch and adds that block's
 * product in with a one-thread sgemm (OpenBLAS's OpenMP build does not spawn
 * threads inside ours). A widened element is used by all T rows, so widening
 * costs 1/T of the multiply-adds. The panels are as many as a multiple of the
 * threads, so that each thread gets the same share. */
static void matmul_panels(const pk_matmul_args *a)
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
            for (int j = 0; j < w; j++)
                pk_matrix_to_f32(a->W, (size_t)(c0 + j) * (size_t)in + (size_t)k0, (size_t)d,
                                 block + (size_t)j * (size_t)d);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, w, d, 1.f, a->x + k0, in, block, d, 1.f,
                        a->y + c0, out);
        }
    }
}

void pk_matmul_half(const pk_matmul_args *a)
{
    if (a->T > PK_MATVEC_MAX_ROWS) matmul_panels(a);
    else matvec_out_major(a);
}

/* In tiles of 64 x 64, so that both the rows read and the rows written stay
 * in cache while a tile is moved. */
void pk_matrix_transpose_half(uint16_t *m, size_t rows, size_t cols, uint16_t *scratch)
{
    enum { TILE = 64 };
    memcpy(scratch, m, rows * cols * sizeof *m);
    for (size_t r0 = 0; r0 < rows; r0 += TILE)
        for (size_t c0 = 0; c0 < cols; c0 += TILE) {
            const size_t r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < cols ? c0 + TILE : cols;
            for (size_t r = r0; r < r1; r++)
                for (size_t c = c0; c < c1; c++) m[c * rows + r] = scratch[r * cols + c];
        }
}
