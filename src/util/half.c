#include "util/half.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define HALF_SIMD 1
#else
#define HALF_SIMD 0
#endif

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Widening is exact: a half's exponent moves to float32's bias, and a
 * subnormal half (exponent 0) is its mantissa times 2^-24. */
float pk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return float_of(sign | 0x7f800000u | man << 13);
    if (exp) return float_of(sign | (exp + 112) << 23 | man << 13);
    float f = ldexpf((float)man, -24);
    return sign ? -f : f;
}

/* Narrowing keeps 10 of float32's 23 mantissa bits. Below half's smallest
 * normal (2^-14) the result is a multiple of 2^-24, so the mantissa (with its
 * implicit bit) is shifted right by however far the exponent is below that
 * and rounded; at the top, anything from 65520 (halfway between 65504, the
 * largest half, and 65536) up rounds to infinity. */
uint16_t pk_f32_to_f16(float f)
{
    const uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000, mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | (mag >> 13 & 0x3ff)); /* NaN, kept quiet */
    if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                     /* infinity */
    if (mag >= 0x38800000u) /* normal: rebias, then round the 13 dropped bits */
        return (uint16_t)(sign | (mag - 0x38000000u + 0xfffu + (mag >> 13 & 1)) >> 13);
    const int exp = (int)(mag >> 23);
    if (exp < 102) return (uint16_t)sign; /* below 2^-25: rounds to zero */
    const uint32_t man = (mag & 0x7fffffu) | 0x800000u;
    const int shift = 126 - exp; /* 14..24 */
    uint32_t q = man >> shift;
    const uint32_t rest = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    q += rest > halfway || (rest == halfway && (q & 1));
    return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal: still the right code */
}

float pk_bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

/* bfloat16 is float32 with its low 16 bits rounded off; a carry out of the
 * mantissa moves into the exponent, and from the largest finite value into
 * infinity, as it should. */
uint16_t pk_f32_to_bf16(float f)
{
    const uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(x >> 16 | 0x40); /* NaN, kept quiet */
    return (uint16_t)((x + 0x7fffu + (x >> 16 & 1)) >> 16);
}

/* F16C's conversion is exact, like pk_f16_to_f32; bf16 is float32's upper half. */
void pk_f16_to_f32_n(const uint16_t *h, float *out, size_t n)
{
    size_t i = 0;
#if HALF_SIMD
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) out[i] = pk_f16_to_f32(h[i]);
}

void pk_bf16_to_f32_n(const uint16_t *h, float *out, size_t n)
{
    size_t i = 0;
#if HALF_SIMD
    for (; i + 8 <= n; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
#endif
    for (; i < n; i++) out[i] = pk_bf16_to_f32(h[i]);
}
