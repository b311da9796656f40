/* Weight matrices in the type they are kept in (float32, IEEE half or
 * bfloat16) and the products that read them in that type.
 *
 * Products by a float32 matrix are OpenBLAS's (model/backend_cpu.c). For the
 * 16-bit types this file has its own, over matrices kept output-major (each
 * output's weights contiguous; model.c transposes the checkpoint's Conv1D
 * matrices into that order at load): for a few rows (decoding) a dot product
 * per output that widens eight elements at a time in registers (F16C's
 * vcvtph2ps for F16, a 16-bit shift for BF16), threads sharing out the
 * outputs, so that each thread streams through its rows of the matrix in
 * order; for more rows, blocks of the matrix widened into per-thread scratch
 * and multiplied there by sgemm. Without AVX2, F16C and FMA at compile time
 * the same products run in plain C. */
#ifndef PIKV_MODEL_MATRIX_H
#define PIKV_MODEL_MATRIX_H

#include "model/safetensors.h" /* pk_dtype */

#include <stddef.h>

/* How a matrix of a product y = x · W is laid out. */
typedef enum {
    PK_IN_MAJOR,   /* W[in, out]: Hugging Face's Conv1D order (float32 layer matrices) */
    PK_OUT_MAJOR,  /* W[out, in]: each output's weights contiguous (16-bit layer matrices, and wte [V, C] as the LM head) */
} pk_matrix_layout;

typedef struct {
    const void *data;         /* row-major elements of `type` */
    pk_dtype type;            /* PK_DT_F32, PK_DT_F16 or PK_DT_BF16 */
    pk_matrix_layout layout;  /* as a product's W; for wte, its rows are also the embeddings */
} pk_matrix;

/* Bytes of one element of a matrix type. */
size_t pk_matrix_elem_size(pk_dtype type);
/* out[0..n) = elements first..first+n-1 of w, as float32. */
void pk_matrix_to_f32(const pk_matrix *w, size_t first, size_t n, float *out);

/* One product y[T, out] = beta * y + x[T, in] · W + bias, W laid out as
 * W->layout says. */
typedef struct {
    float *y;            /* [T, out], row stride out */
    const float *x;      /* [T, in], row stride in */
    const pk_matrix *W;
    const float *bias;   /* [out], or NULL */
    int T, in, out;
    float beta;          /* 0: overwrite y (its old contents are never read); 1: accumulate */
    float *panels;       /* scratch for 16-bit W: [n_threads, PK_PANEL_FLOATS] */
    int n_threads;
} pk_matmul_args;

/* Up to this many rows a 16-bit product is the matrix-vector kernel, once per
 * row; above it, widened blocks and sgemm. */
enum { PK_MATVEC_MAX_ROWS = 4 };
/* The widened block one thread multiplies: PK_PANEL_DEPTH rows of the inner
 * dimension by at most PK_PANEL_WIDTH outputs (256 KB, an L2's worth). */
enum { PK_PANEL_DEPTH = 256, PK_PANEL_WIDTH = 256, PK_PANEL_FLOATS = PK_PANEL_DEPTH * PK_PANEL_WIDTH };

/* The product for a 16-bit W (F16 or BF16). W is output-major: the loader
 * keeps every 16-bit matrix so, and no other code makes one. */
void pk_matmul_half(const pk_matmul_args *a);

/* Transpose a 16-bit [rows, cols] matrix in place into [cols, rows], through
 * scratch of rows * cols elements. */
void pk_matrix_transpose_half(uint16_t *m, size_t rows, size_t cols, uint16_t *scratch);

#endif
