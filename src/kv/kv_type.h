/* The row codec of the KV cache: how one key or value row of `dim` floats is
 * stored in each pikv_kv_type, and the operations attention and presses need
 * on a stored row. Every reader of the cache goes through these, so a type is
 * defined in this one place.
 *
 * The block types follow llama.cpp's layouts and reference quantizers
 * (ggml-quants.c): a row is dim / 32 blocks, each with its f16 scale d first.
 *   q8_0: 32 signed bytes q; x = d * q, with d = amax / 127 and
 *         q = round(x / d) (halves away from zero).
 *   q4_0: 16 bytes of 4-bit q, element i in the low nibble of byte i and
 *         element 16 + i in its high nibble; x = (q - 8) * d, with d = m / -8
 *         for m the value of largest magnitude (the first such, sign kept) and
 *         q = min(15, trunc(x / d + 8.5)).
 * Quantizing multiplies by 1/d of the unrounded scale; decoding uses the f16
 * scale, as llama.cpp does. */
#ifndef PIKV_KV_KV_TYPE_H
#define PIKV_KV_KV_TYPE_H

#include "pikv.h"

#include <stddef.h>
#include <stdint.h>

enum { PK_KV_BLOCK = 32 }; /* values per q8_0 / q4_0 block */

typedef struct {
    uint16_t d;               /* f16 scale */
    int8_t q[PK_KV_BLOCK];
} pk_block_q8_0;

typedef struct {
    uint16_t d;               /* f16 scale */
    uint8_t q[PK_KV_BLOCK / 2]; /* low nibble: element i, high nibble: element 16 + i */
} pk_block_q4_0;

/* Whether rows of `dim` values can be stored in type t: fails, naming the
 * type and `what` (keys, values), for a type outside the enum or a block type
 * with dim not a multiple of 32. */
int pk_kv_type_check(pikv_kv_type t, int dim, const char *what);

/* Bytes of a stored row of `dim` values (scales included). For dim a multiple
 * of 32 this is also the byte offset of element dim within a longer row. */
size_t pk_kv_row_bytes(pikv_kv_type t, int dim);

/* Store x[0..dim) as a row of type t. */
void pk_kv_quantize_row(pikv_kv_type t, const float *x, void *row, int dim);
/* The floats a stored row decodes to. */
void pk_kv_dequantize_row(pikv_kv_type t, const void *row, float *x, int dim);
/* q · decoded(row). */
float pk_kv_row_dot(pikv_kv_type t, const void *row, const float *q, int dim);
/* acc += a * decoded(row). */
void pk_kv_row_axpy(pikv_kv_type t, const void *row, float a, float *acc, int dim);
/* The same over n rows stored one after another (a head's entries):
 * out[j] = q · decoded(row j), and acc += sum over j of a[j] * decoded(row
 * j). Decoding one query's attention runs through these: each stored value
 * is widened in registers (AVX2, F16C) and used at once, never written out
 * as a float. */
void pk_kv_rows_dot(pikv_kv_type t, const void *rows, int n, const float *q, int dim, float *out);
void pk_kv_rows_axpy(pikv_kv_type t, const void *rows, int n, const float *a, int dim, float *acc);

#endif
