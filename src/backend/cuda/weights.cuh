/* The model's weights in device memory, uploaded once from a loaded
 * pikv_model. Matrices are stored in the session's type (bf16, f16 or f32) and
 * output-major [out][in], so that a decode step's matrix-vector products read
 * each output's weights contiguously; layer-norm weights and biases stay
 * float32 (they are small and read once per row). */
#ifndef PIKV_BACKEND_CUDA_WEIGHTS_CUH
#define PIKV_BACKEND_CUDA_WEIGHTS_CUH

#include "backend/cuda/engine.h"

#include <stddef.h>

typedef struct {
    const void *attn_w, *attn_proj_w, *fc_w, *fc_proj_w;   /* [3C][C], [C][C], [F][C], [C][F] */
    const float *ln_1_w, *ln_1_b, *attn_b, *attn_proj_b, *ln_2_w, *ln_2_b, *fc_b, *fc_proj_b;
} pk_cuda_layer;

typedef struct {
    void *base;              /* the one device allocation */
    size_t bytes;
    const void *wte;         /* [V][C] */
    const float *wpe;        /* [P][C], float32 in every storage type */
    const void *lm_head;     /* [V][C]: wte when tied */
    const float *ln_f_w, *ln_f_b;
    pk_cuda_layer *layers;   /* host array of device pointers, [n_layer] */
} pk_cuda_weights;

/* Bytes of one stored element. */
size_t pk_cuda_dtype_size(pk_cuda_dtype t);

/* Upload every weight of m in type t. The only place that reads the host
 * model's weight fields. */
int pk_cuda_weights_upload(pk_cuda_weights *w, const pikv_model *m, pk_cuda_dtype t);
void pk_cuda_weights_free(pk_cuda_weights *w);

#endif
