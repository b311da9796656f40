/* 16-bit floating point: IEEE binary16 (f16) and bfloat16 (bf16), converted
 * to and from float32 with round-to-nearest-even, the way llama.cpp stores
 * them. The KV cache stores rows in these types and the model loader reads
 * weights in them, so the conversions live here, once. */
#ifndef PIKV_UTIL_HALF_H
#define PIKV_UTIL_HALF_H

#include <stdint.h>

/* float32 to binary16: nearest, ties to even; overflow gives infinity,
 * magnitudes below half the smallest subnormal give (signed) zero, a NaN stays
 * a quiet NaN. */
uint16_t pk_f16_from_f32(float f);
/* binary16 to float32, exactly (subnormals included). */
float pk_f32_from_f16(uint16_t h);

/* float32 to bfloat16: nearest, ties to even; a NaN stays a quiet NaN. */
uint16_t pk_bf16_from_f32(float f);
/* bfloat16 to float32, exactly: the high half of the float's bits. */
float pk_f32_from_bf16(uint16_t b);

#endif
