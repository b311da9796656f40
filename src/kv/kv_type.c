/* The row codec (see kv/kv_type.h). */
#include "kv/kv_type.h"
#include "util/error.h"
#include "util/half.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define KV_SIMD 1
#else
#define KV_SIMD 0
#endif

_Static_assert(sizeof(pk_block_q8_0) == 34, "q8_0 block: 2-byte scale + 32 bytes");
_Static_assert(sizeof(pk_block_q4_0) == 18, "q4_0 block: 2-byte scale + 16 bytes");

static const char *const type_names[PIKV_KV_N_TYPES] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

int pikv_kv_type_from_name(const char *name, pikv_kv_type *out)
{
    for (int t = 0; name && t < PIKV_KV_N_TYPES; t++)
        if (strcmp(name, type_names[t]) == 0) {
            *out = (pikv_kv_type)t;
            return 0;
        }
    return pk_fail("unknown KV type '%s' (expected f32, f16, bf16, q8_0 or q4_0)", name ? name : "(null)");
}

const char *pikv_kv_type_name(pikv_kv_type t)
{
    return (unsigned)t < PIKV_KV_N_TYPES ? type_names[t] : "?";
}

static int is_block_type(pikv_kv_type t) { return t == PIKV_KV_Q8_0 || t == PIKV_KV_Q4_0; }

int pk_kv_type_check(pikv_kv_type t, int dim, const char *what)
{
    if ((unsigned)t >= PIKV_KV_N_TYPES) return pk_fail("KV cache: %s type %d is not a KV type", what, (int)t);
    if (is_block_type(t) && dim % PK_KV_BLOCK != 0)
        return pk_fail("KV cache: %s type %s stores blocks of %d values, but head_dim %d is not a multiple of %d",
                       what, type_names[t], PK_KV_BLOCK, dim, PK_KV_BLOCK);
    return 0;
}

size_t pk_kv_row_bytes(pikv_kv_type t, int dim)
{
    switch (t) {
    case PIKV_KV_F16:
    case PIKV_KV_BF16: return (size_t)dim * sizeof(uint16_t);
    case PIKV_KV_Q8_0: return (size_t)(dim / PK_KV_BLOCK) * sizeof(pk_block_q8_0);
    case PIKV_KV_Q4_0: return (size_t)(dim / PK_KV_BLOCK) * sizeof(pk_block_q4_0);
    default: return (size_t)dim * sizeof(float);
    }
}

static void quantize_q8_0(const float *x, pk_block_q8_0 *b)
{
    float amax = 0;
    for (int i = 0; i < PK_KV_BLOCK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float d = amax / 127, inv = d != 0 ? 1 / d : 0;
    b->d = pk_f32_to_f16(d);
    for (int i = 0; i < PK_KV_BLOCK; i++) b->q[i] = (int8_t)roundf(x[i] * inv);
}

static void quantize_q4_0(const float *x, pk_block_q4_0 *b)
{
    float amax = 0, extreme = 0; /* the first value of largest magnitude, with its sign */
    for (int i = 0; i < PK_KV_BLOCK; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            extreme = x[i];
        }
    const float d = extreme / -8, inv = d != 0 ? 1 / d : 0;
    b->d = pk_f32_to_f16(d);
    for (int i = 0; i < PK_KV_BLOCK / 2; i++) {
        /* x / d lies in [-8, 8]; adding 8.5 and truncating rounds it to 0..16. */
        int lo = (int)(x[i] * inv + 8.5f), hi = (int)(x[PK_KV_BLOCK / 2 + i] * inv + 8.5f);
        lo = lo < 15 ? lo : 15;
        hi = hi < 15 ? hi : 15;
        b->q[i] = (uint8_t)(lo | hi << 4);
    }
}

/* A block's f16 scale: F16C's conversion where there is one, which is exact
 * like pk_f16_to_f32 (decoding is on every attention's path). */
static inline float block_scale(uint16_t d)
{
#if KV_SIMD
    return _cvtsh_ss(d);
#else
    return pk_f16_to_f32(d);
#endif
}

static void dequantize_q8_0(const pk_block_q8_0 *b, float *x)
{
    const float d = block_scale(b->d);
#if KV_SIMD
    const __m256 scale = _mm256_set1_ps(d);
    for (int i = 0; i < PK_KV_BLOCK; i += 8) {
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + i)));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale));
    }
#else
    for (int i = 0; i < PK_KV_BLOCK; i++) x[i] = (float)b->q[i] * d;
#endif
}

static void dequantize_q4_0(const pk_block_q4_0 *b, float *x)
{
    const float d = block_scale(b->d);
    for (int i = 0; i < PK_KV_BLOCK / 2; i++) {
        x[i] = (float)((b->q[i] & 0x0f) - 8) * d;
        x[PK_KV_BLOCK / 2 + i] = (float)((b->q[i] >> 4) - 8) * d;
    }
}

void pk_kv_quantize_row(pikv_kv_type t, const float *x, void *row, int dim)
{
    uint16_t *half = row;
    switch (t) {
    case PIKV_KV_F16:
        for (int i = 0; i < dim; i++) half[i] = pk_f32_to_f16(x[i]);
        break;
    case PIKV_KV_BF16:
        for (int i = 0; i < dim; i++) half[i] = pk_f32_to_bf16(x[i]);
        break;
    case PIKV_KV_Q8_0:
        for (int i = 0; i < dim / PK_KV_BLOCK; i++) quantize_q8_0(x + i * PK_KV_BLOCK, (pk_block_q8_0 *)row + i);
        break;
    case PIKV_KV_Q4_0:
        for (int i = 0; i < dim / PK_KV_BLOCK; i++) quantize_q4_0(x + i * PK_KV_BLOCK, (pk_block_q4_0 *)row + i);
        break;
    default: memcpy(row, x, (size_t)dim * sizeof(float));
    }
}

void pk_kv_dequantize_row(pikv_kv_type t, const void *row, float *x, int dim)
{
    const uint16_t *half = row;
    switch (t) {
    case PIKV_KV_F16: pk_f16_to_f32_n(half, x, (size_t)dim); break;
    case PIKV_KV_BF16: pk_bf16_to_f32_n(half, x, (size_t)dim); break;
    case PIKV_KV_Q8_0:
        for (int i = 0; i < dim / PK_KV_BLOCK; i++)
            dequantize_q8_0((const pk_block_q8_0 *)row + i, x + i * PK_KV_BLOCK);
        break;
    case PIKV_KV_Q4_0:
        for (int i = 0; i < dim / PK_KV_BLOCK; i++)
            dequantize_q4_0((const pk_block_q4_0 *)row + i, x + i * PK_KV_BLOCK);
        break;
    default: memcpy(x, row, (size_t)dim * sizeof(float));
    }
}

/* The portable dot and axpy decode a row a block (32 values) at a time into
 * a small buffer and work on the decoded floats, so that they see exactly
 * what pk_kv_dequantize_row gives. */
static float row_dot_decoded(pikv_kv_type t, const void *row, const float *q, int dim)
{
    float decoded[PK_KV_BLOCK], sum = 0;
    for (int i = 0; i < dim; i += PK_KV_BLOCK) {
        const int n = dim - i < PK_KV_BLOCK ? dim - i : PK_KV_BLOCK;
        pk_kv_dequantize_row(t, (const uint8_t *)row + pk_kv_row_bytes(t, i), decoded, n);
        for (int j = 0; j < n; j++) sum += q[i + j] * decoded[j];
    }
    return sum;
}

static void row_axpy_decoded(pikv_kv_type t, const void *row, float a, float *acc, int dim)
{
    float decoded[PK_KV_BLOCK];
    for (int i = 0; i < dim; i += PK_KV_BLOCK) {
        const int n = dim - i < PK_KV_BLOCK ? dim - i : PK_KV_BLOCK;
        pk_kv_dequantize_row(t, (const uint8_t *)row + pk_kv_row_bytes(t, i), decoded, n);
        for (int j = 0; j < n; j++) acc[i + j] += a * decoded[j];
    }
}

#if KV_SIMD
/* Eight values of a block type's row from element i (a multiple of 8),
 * widened exactly but without their block's scale: sign extension for
 * q8_0; for q4_0, elements 0..15 of a block are the low nibbles of its
 * bytes, 16..31 the high ones, minus 8. */
static inline __attribute__((always_inline)) __m256 load8_unscaled(pikv_kv_type t, const void *row, int i)
{
    if (t == PIKV_KV_Q8_0) {
        const pk_block_q8_0 *b = (const pk_block_q8_0 *)row + i / PK_KV_BLOCK;
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + i % PK_KV_BLOCK))));
    }
    const pk_block_q4_0 *b = (const pk_block_q4_0 *)row + i / PK_KV_BLOCK;
    const int k = i % PK_KV_BLOCK, byte = k % (PK_KV_BLOCK / 2);
    __m128i v = _mm_loadl_epi64((const __m128i *)(b->q + byte));
    if (k >= PK_KV_BLOCK / 2) v = _mm_srli_epi16(v, 4);
    v = _mm_sub_epi8(_mm_and_si128(v, _mm_set1_epi8(0x0f)), _mm_set1_epi8(8));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

/* The scale of the block holding element i of a block type's row. */
static inline __attribute__((always_inline)) float scale_at(pikv_kv_type t, const void *row, int i)
{
    if (t == PIKV_KV_Q8_0) return block_scale(((const pk_block_q8_0 *)row + i / PK_KV_BLOCK)->d);
    return block_scale(((const pk_block_q4_0 *)row + i / PK_KV_BLOCK)->d);
}

/* Eight stored values from element i of a 16-bit row, widened exactly: F16C
 * for f16, a shift for bf16. */
static inline __attribute__((always_inline)) __m256 load8(pikv_kv_type t, const void *row, int i)
{
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (t == PIKV_KV_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* out[0..3] = the sums of s0..s3's lanes, reduced together. */
static inline void store4_sums(__m256 s0, __m256 s1, __m256 s2, __m256 s3, float *out)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* The SIMD loops of the 16-bit types, for dim a multiple of 16; t a
 * constant where inlined. Dot products go four rows at a time, their four
 * sums reduced together, so that the horizontal sums do not cost a row of 64
 * values as much as its products. */
static inline __attribute__((always_inline)) void rows_dot_simd(pikv_kv_type t, const uint8_t *rows, size_t stride,
                                                                int n, const float *q, int dim, float *out)
{
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const uint8_t *r = rows + (size_t)j * stride;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int i = 0; i < dim; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            s0 = _mm256_fmadd_ps(load8(t, r, i), qv, s0);
            s1 = _mm256_fmadd_ps(load8(t, r + stride, i), qv, s1);
            s2 = _mm256_fmadd_ps(load8(t, r + 2 * stride, i), qv, s2);
            s3 = _mm256_fmadd_ps(load8(t, r + 3 * stride, i), qv, s3);
        }
        store4_sums(s0, s1, s2, s3, out + j);
    }
    for (; j < n; j++) {
        const void *row = rows + (size_t)j * stride;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        for (int i = 0; i < dim; i += 16) {
            s0 = _mm256_fmadd_ps(load8(t, row, i), _mm256_loadu_ps(q + i), s0);
            s1 = _mm256_fmadd_ps(load8(t, row, i + 8), _mm256_loadu_ps(q + i + 8), s1);
        }
        out[j] = hsum8(_mm256_add_ps(s0, s1));
    }
}

/* The same for the block types (dim a multiple of 32): a block's products
 * are summed on its stored integers and scaled once, which saves the block's
 * scale on every value. */
static inline __attribute__((always_inline)) void rows_dot_blocks(pikv_kv_type t, const uint8_t *rows, size_t stride,
                                                                  int n, const float *q, int dim, float *out)
{
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const uint8_t *r = rows + (size_t)j * stride;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int i = 0; i < dim; i += PK_KV_BLOCK) {
            __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
            for (int e = i; e < i + PK_KV_BLOCK; e += 8) {
                const __m256 qv = _mm256_loadu_ps(q + e);
                b0 = _mm256_fmadd_ps(load8_unscaled(t, r, e), qv, b0);
                b1 = _mm256_fmadd_ps(load8_unscaled(t, r + stride, e), qv, b1);
                b2 = _mm256_fmadd_ps(load8_unscaled(t, r + 2 * stride, e), qv, b2);
                b3 = _mm256_fmadd_ps(load8_unscaled(t, r + 3 * stride, e), qv, b3);
            }
            s0 = _mm256_fmadd_ps(b0, _mm256_set1_ps(scale_at(t, r, i)), s0);
            s1 = _mm256_fmadd_ps(b1, _mm256_set1_ps(scale_at(t, r + stride, i)), s1);
            s2 = _mm256_fmadd_ps(b2, _mm256_set1_ps(scale_at(t, r + 2 * stride, i)), s2);
            s3 = _mm256_fmadd_ps(b3, _mm256_set1_ps(scale_at(t, r + 3 * stride, i)), s3);
        }
        store4_sums(s0, s1, s2, s3, out + j);
    }
    for (; j < n; j++) {
        const void *row = rows + (size_t)j * stride;
        __m256 s = _mm256_setzero_ps();
        for (int i = 0; i < dim; i += PK_KV_BLOCK) {
            __m256 b = _mm256_setzero_ps();
            for (int e = i; e < i + PK_KV_BLOCK; e += 8) b = _mm256_fmadd_ps(load8_unscaled(t, row, e), _mm256_loadu_ps(q + e), b);
            s = _mm256_fmadd_ps(b, _mm256_set1_ps(scale_at(t, row, i)), s);
        }
        out[j] = hsum8(s);
    }
}

/* acc += the weighted rows, 64 values of acc at a time held in registers
 * over every row, so that acc is loaded and stored once per 64 values. A
 * block type's row weight is multiplied by the block's scale once per block. */
static inline __attribute__((always_inline)) void rows_axpy_simd(pikv_kv_type t, const uint8_t *rows, size_t stride,
                                                                 int n, const float *a, int dim, float *acc)
{
    enum { STRIP = 64 };
    const int blocks = t == PIKV_KV_Q8_0 || t == PIKV_KV_Q4_0;
    for (int c0 = 0; c0 < dim; c0 += STRIP) {
        const int w = dim - c0 < STRIP ? dim - c0 : STRIP; /* a multiple of 16 (of 32 for the block types) */
        __m256 v[STRIP / 8];
        for (int k = 0; k < w / 8; k++) v[k] = _mm256_loadu_ps(acc + c0 + 8 * k);
        for (int j = 0; j < n; j++) {
            const void *row = rows + (size_t)j * stride;
            if (blocks) {
                for (int b = 0; b < w / PK_KV_BLOCK; b++) {
                    const int i = c0 + b * PK_KV_BLOCK;
                    const __m256 wb = _mm256_set1_ps(a[j] * scale_at(t, row, i));
#pragma GCC unroll 4
                    for (int k = 0; k < PK_KV_BLOCK / 8; k++)
                        v[4 * b + k] = _mm256_fmadd_ps(load8_unscaled(t, row, i + 8 * k), wb, v[4 * b + k]);
                }
                continue;
            }
            const __m256 wj = _mm256_set1_ps(a[j]);
            if (w == STRIP) {
#pragma GCC unroll 8
                for (int k = 0; k < STRIP / 8; k++) v[k] = _mm256_fmadd_ps(load8(t, row, c0 + 8 * k), wj, v[k]);
            } else {
                for (int k = 0; k < w / 8; k++) v[k] = _mm256_fmadd_ps(load8(t, row, c0 + 8 * k), wj, v[k]);
            }
        }
        for (int k = 0; k < w / 8; k++) _mm256_storeu_ps(acc + c0 + 8 * k, v[k]);
    }
}
#endif

void pk_kv_rows_dot(pikv_kv_type t, const void *rows, int n, const float *q, int dim, float *out)
{
    const size_t stride = pk_kv_row_bytes(t, dim);
#if KV_SIMD
    if (dim % 16 == 0) {
        switch (t) {
        case PIKV_KV_F16: rows_dot_simd(PIKV_KV_F16, rows, stride, n, q, dim, out); return;
        case PIKV_KV_BF16: rows_dot_simd(PIKV_KV_BF16, rows, stride, n, q, dim, out); return;
        case PIKV_KV_Q8_0: rows_dot_blocks(PIKV_KV_Q8_0, rows, stride, n, q, dim, out); return;
        case PIKV_KV_Q4_0: rows_dot_blocks(PIKV_KV_Q4_0, rows, stride, n, q, dim, out); return;
        default: break;
        }
    }
#endif
    for (int j = 0; j < n; j++) out[j] = row_dot_decoded(t, (const uint8_t *)rows + (size_t)j * stride, q, dim);
}

void pk_kv_rows_axpy(pikv_kv_type t, const void *rows, int n, const float *a, int dim, float *acc)
{
    const size_t stride = pk_kv_row_bytes(t, dim);
#if KV_SIMD
    if (dim % 16 == 0) {
        switch (t) {
        case PIKV_KV_F16: rows_axpy_simd(PIKV_KV_F16, rows, stride, n, a, dim, acc); return;
        case PIKV_KV_BF16: rows_axpy_simd(PIKV_KV_BF16, rows, stride, n, a, dim, acc); return;
        case PIKV_KV_Q8_0: rows_axpy_simd(PIKV_KV_Q8_0, rows, stride, n, a, dim, acc); return;
        case PIKV_KV_Q4_0: rows_axpy_simd(PIKV_KV_Q4_0, rows, stride, n, a, dim, acc); return;
        default: break;
        }
    }
#endif
    for (int j = 0; j < n; j++) row_axpy_decoded(t, (const uint8_t *)rows + (size_t)j * stride, a[j], acc, dim);
}

float pk_kv_row_dot(pikv_kv_type t, const void *row, const float *q, int dim)
{
    float s;
    pk_kv_rows_dot(t, row, 1, q, dim, &s);
    return s;
}

void pk_kv_row_axpy(pikv_kv_type t, const void *row, float a, float *acc, int dim)
{
    pk_kv_rows_axpy(t, row, 1, &a, dim, acc);
}
