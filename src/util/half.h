/* The two 16-bit floating-point formats of checkpoints, one element at a
 * time: IEEE 754 binary16 ("F16": 5 exponent bits, 10 mantissa bits) and
 * bfloat16 ("BF16": float32's upper half, 8 exponent bits, 7 mantissa bits).
 * Narrowing rounds to nearest, ties to even, as PyTorch's .half() and
 * .bfloat16() do; NaN stays NaN, magnitudes past the format's range become
 * infinities. */
#ifndef PIKV_UTIL_HALF_H
#define PIKV_UTIL_HALF_H

#include <stddef.h>
#include <stdint.h>

float pk_f16_to_f32(uint16_t h);
uint16_t pk_f32_to_f16(float f);
float pk_bf16_to_f32(uint16_t h);
uint16_t pk_f32_to_bf16(float f);

/* n elements at once, as the one-element functions give them (eight at a time
 * with F16C / AVX2 where the build has them). */
void pk_f16_to_f32_n(const uint16_t *h, float *out, size_t n);
void pk_bf16_to_f32_n(const uint16_t *h, float *out, size_t n);

#endif
