/* The row codec (see kv/kv_type.h). */
#include "kv/kv_type.h"
#include "util/error.h"
#include "util/half.h"

#include <math.h>
#include <string.h>

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

static void dequantize_q8_0(const pk_block_q8_0 *b, float *x)
{
    const float d = pk_f16_to_f32(b->d);
    for (int i = 0; i < PK_KV_BLOCK; i++) x[i] = (float)b->q[i] * d;
}

static void dequantize_q4_0(const pk_block_q4_0 *b, float *x)
{
    const float d = pk_f16_to_f32(b->d);
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

/* dot and axpy decode a row a block (32 values) at a time into a small buffer
 * and work on the decoded floats, so that they see exactly what
 * pk_kv_dequantize_row gives. */
float pk_kv_row_dot(pikv_kv_type t, const void *row, const float *q, int dim)
{
    float decoded[PK_KV_BLOCK], sum = 0;
    for (int i = 0; i < dim; i += PK_KV_BLOCK) {
        const int n = dim - i < PK_KV_BLOCK ? dim - i : PK_KV_BLOCK;
        pk_kv_dequantize_row(t, (const uint8_t *)row + pk_kv_row_bytes(t, i), decoded, n);
        for (int j = 0; j < n; j++) sum += q[i + j] * decoded[j];
    }
    return sum;
}

void pk_kv_row_axpy(pikv_kv_type t, const void *row, float a, float *acc, int dim)
{
    float decoded[PK_KV_BLOCK];
    for (int i = 0; i < dim; i += PK_KV_BLOCK) {
        const int n = dim - i < PK_KV_BLOCK ? dim - i : PK_KV_BLOCK;
        pk_kv_dequantize_row(t, (const uint8_t *)row + pk_kv_row_bytes(t, i), decoded, n);
        for (int j = 0; j < n; j++) acc[i + j] += a * decoded[j];
    }
}
