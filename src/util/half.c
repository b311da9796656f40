/* The 16-bit float conversions, on the bit patterns (no reliance on the
 * compiler's _Float16 or on the rounding mode of the FPU). */
#include "util/half.h"

#include <math.h>
#include <string.h>

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Shift m right by `shift` bits (1..31), rounding to nearest, ties to even. */
static uint32_t shift_round_even(uint32_t m, int shift)
{
    const uint32_t kept = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    return kept + (rest > half || (rest == half && (kept & 1)));
}

uint16_t pk_f16_from_f32(float f)
{
    const uint32_t u = bits_of(f), sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);     /* NaN */
    if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);    /* 65520 and up round to infinity */
    if (mag >= 0x38800000u)                                        /* 2^-14 and up: a normal half */
        /* Rebias the exponent (127 - 15 = 112) and round away the low 13 bits;
         * a carry out of the mantissa correctly bumps the exponent. */
        return (uint16_t)(sign | shift_round_even(mag - (112u << 23), 13));
    if (mag <= 0x33000000u) return (uint16_t)sign;                 /* at most 2^-25: rounds to zero */
    /* A subnormal half counts units of 2^-24: the float's full mantissa
     * (implicit bit included) shifted by how far its exponent is below 2^-1. */
    const int exponent = (int)(mag >> 23);
    return (uint16_t)(sign | shift_round_even((mag & 0x7fffffu) | 0x800000u, 126 - exponent));
}

float pk_f32_from_f16(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0x1f) return float_of(sign | 0x7f800000u | mantissa << 13);
    if (exponent) return float_of(sign | (exponent + 112) << 23 | mantissa << 13);
    const float subnormal = ldexpf((float)mantissa, -24); /* exact: at most 10 significant bits */
    return sign ? -subnormal : subnormal;
}

uint16_t pk_bf16_from_f32(float f)
{
    const uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN, made quiet */
    return (uint16_t)shift_round_even(u, 16);
}

float pk_f32_from_bf16(uint16_t b) { return float_of((uint32_t)b << 16); }
