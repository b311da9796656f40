/* Uploading the weights: convert, transpose Conv1D matrices to output-major,
 * copy into one device allocation. */
#include "backend/cuda/weights.cuh"

extern "C" {
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"
}

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string.h>

size_t pk_cuda_dtype_size(pk_cuda_dtype t) { return t == PK_CUDA_F32 ? 4 : 2; }

extern "C" pk_cuda_dtype pk_cuda_dtype_for(pikv_weight_type t)
{
    return t == PIKV_WEIGHTS_F32 ? PK_CUDA_F32 : t == PIKV_WEIGHTS_F16 ? PK_CUDA_F16 : PK_CUDA_BF16;
}

/* Carves consecutive 256-byte aligned pieces out of the device allocation and
 * fills them from host weights (of the model's type, widened to float32 in
 * `wide`) through a staging buffer. */
typedef struct {
    char *base;
    size_t used, cap;
    pk_cuda_dtype type;
    void *stage;
    float *wide;
    size_t stage_bytes;    /* of each of stage and wide */
} uploader;

static size_t align_up(size_t n) { return (n + 255) & ~(size_t)255; }

/* Convert n floats to the storage type into out; when transpose, src is
 * [rows][cols] and out becomes [cols][rows]. */
static void convert(void *out, const float *src, size_t rows, size_t cols, int transpose, pk_cuda_dtype t)
{
    const size_t n = rows * cols;
    for (size_t i = 0; i < n; i++) {
        /* element i of the output: (i / rows, i % rows) of the transpose */
        const float v = transpose ? src[(i % rows) * cols + i / rows] : src[i];
        if (t == PK_CUDA_F32)
            ((float *)out)[i] = v;
        else if (t == PK_CUDA_F16)
            ((__half *)out)[i] = __float2half_rn(v);
        else
            ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(v);
    }
}

/* A float32 host array seen as a matrix. */
static pk_matrix f32_array(const float *p)
{
    pk_matrix m = {};
    m.data = p;
    m.type = PK_DT_F32;
    return m;
}

/* Copy a [rows][cols] host matrix (transposed when asked) or a float32 vector
 * (keep_f32) to the next piece of device memory. */
static const void *put(uploader *u, pk_matrix src, size_t rows, size_t cols, int transpose, int keep_f32)
{
    const pk_cuda_dtype t = keep_f32 ? PK_CUDA_F32 : u->type;
    const size_t bytes = rows * cols * pk_cuda_dtype_size(t);
    if (u->used + align_up(bytes) > u->cap || bytes > u->stage_bytes) {
        pk_fail("CUDA weights: piece of %zu bytes does not fit the upload plan", bytes);
        return NULL;
    }
    pk_matrix_to_f32(&src, 0, rows * cols, u->wide);
    convert(u->stage, u->wide, rows, cols, transpose, t);
    void *dst = u->base + u->used;
    cudaError_t e = cudaMemcpy(dst, u->stage, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        pk_fail("CUDA weights: copy to the device: %s", cudaGetErrorString(e));
        return NULL;
    }
    u->used += align_up(bytes);
    return dst;
}

/* Device bytes of all pieces, for the one allocation. */
static size_t planned_bytes(const pikv_config *c, int tied, pk_cuda_dtype t)
{
    const size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, es = pk_cuda_dtype_size(t);
    size_t per_layer = align_up(3 * C * C * es) + align_up(C * C * es) + align_up(F * C * es) + align_up(C * F * es) +
                       6 * align_up(C * 4) + align_up(3 * C * 4) + align_up(F * 4);
    return (size_t)c->n_layer * per_layer + align_up(V * C * es) * (tied ? 1 : 2) +
           align_up((size_t)c->n_positions * C * 4) + 2 * align_up(C * 4);
}

int pk_cuda_weights_upload(pk_cuda_weights *w, const pikv_model *m, pk_cuda_dtype t)
{
    const pikv_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    const int tied = m->lm_head.data == m->wte.data;
    memset(w, 0, sizeof *w);
    w->layers = (pk_cuda_layer *)pk_calloc((size_t)c->n_layer, sizeof *w->layers, "CUDA layer table");
    if (!w->layers) return -1;
    uploader u;
    memset(&u, 0, sizeof u);
    u.type = t;
    u.cap = planned_bytes(c, tied, t);
    size_t largest = V * C > (size_t)c->n_positions * C ? V * C : (size_t)c->n_positions * C;
    if (3 * C * C > largest) largest = 3 * C * C;
    if (F * C > largest) largest = F * C;
    u.stage_bytes = largest * 4;
    u.stage = pk_malloc(u.stage_bytes, "CUDA weight staging");
    u.wide = (float *)pk_malloc(u.stage_bytes, "CUDA weight staging");
    cudaError_t e = cudaMalloc((void **)&u.base, u.cap);
    if (!u.stage || !u.wide || e != cudaSuccess) {
        if (e != cudaSuccess) pk_fail("CUDA weights: allocating %zu bytes: %s", u.cap, cudaGetErrorString(e));
        pk_free(u.stage);
        pk_free(u.wide);
        pk_cuda_weights_free(w);
        return -1;
    }
    w->base = u.base;
    w->bytes = u.cap;
    int ok = 1;
#define PUT(dst, src, rows, cols, tr, f32) ok = ok && ((dst) = (decltype(dst))put(&u, src, rows, cols, tr, f32)) != NULL
    PUT(w->wte, m->wte, V, C, 0, 0);
    /* Position embeddings stay float32, as the CPU engine keeps them: in bf16
     * every row's position would be rounded to 8 bits before the first layer. */
    PUT(w->wpe, f32_array(m->wpe), (size_t)c->n_positions, C, 0, 1);
    if (tied)
        w->lm_head = w->wte;
    else
        PUT(w->lm_head, m->lm_head, V, C, 0, 0);
    PUT(w->ln_f_w, f32_array(m->ln_f_w), 1, C, 0, 1);
    PUT(w->ln_f_b, f32_array(m->ln_f_b), 1, C, 0, 1);
    for (int l = 0; l < c->n_layer && ok; l++) {
        const pk_layer *h = &m->layers[l];
        pk_cuda_layer *d = &w->layers[l];
        /* Layer matrices go to the device output-major: float32 host ones
         * are Conv1D's [in][out] and transposed here, 16-bit ones already
         * [out][in] (model/matrix.h). */
#define PUT_OUT_MAJOR(dst, src, in, out)                                           \
    if ((src).layout == PK_IN_MAJOR) PUT(dst, src, in, out, 1, 0);                  \
    else PUT(dst, src, out, in, 0, 0)
        PUT_OUT_MAJOR(d->attn_w, h->attn_w, C, 3 * C);
        PUT_OUT_MAJOR(d->attn_proj_w, h->attn_proj_w, C, C);
        PUT_OUT_MAJOR(d->fc_w, h->fc_w, C, F);
        PUT_OUT_MAJOR(d->fc_proj_w, h->fc_proj_w, F, C);
#undef PUT_OUT_MAJOR
        PUT(d->ln_1_w, f32_array(h->ln_1_w), 1, C, 0, 1);
        PUT(d->ln_1_b, f32_array(h->ln_1_b), 1, C, 0, 1);
        PUT(d->attn_b, f32_array(h->attn_b), 1, 3 * C, 0, 1);
        PUT(d->attn_proj_b, f32_array(h->attn_proj_b), 1, C, 0, 1);
        PUT(d->ln_2_w, f32_array(h->ln_2_w), 1, C, 0, 1);
        PUT(d->ln_2_b, f32_array(h->ln_2_b), 1, C, 0, 1);
        PUT(d->fc_b, f32_array(h->fc_b), 1, F, 0, 1);
        PUT(d->fc_proj_b, f32_array(h->fc_proj_b), 1, C, 0, 1);
    }
#undef PUT
    pk_free(u.stage);
    pk_free(u.wide);
    if (!ok) {
        pk_cuda_weights_free(w);
        return -1;
    }
    return 0;
}

void pk_cuda_weights_free(pk_cuda_weights *w)
{
    if (w->base) cudaFree(w->base);
    pk_free(w->layers);
    memset(w, 0, sizeof *w);
}
