/* A whole decode step of up to R sequences in one launch.
 *
 * At batch 1 the bundled model's step was 33 kernels of about 4 µs each while
 * its bytes take 9 µs to read: the step was made of kernel boundaries. Here
 * one persistent kernel runs the same phases as those kernels (the same
 * device functions of kernels.cuh, so the same arithmetic), every block taking
 * its share of each phase, with a grid-wide barrier where a phase needs the
 * whole of the one before: embedding; per layer the QKV product (layer norm in
 * its prologue, keys and values appended to the cache), decode attention, the
 * attention projection with the residual add, the MLP's first product with
 * GELU, its second with the residual add; then the LM head and the greedy
 * choice. Before each barrier a block issues its first weight loads of the
 * next phase, so that they are in flight while it waits.
 *
 * The kernel is launched cooperatively, with no more blocks than can be
 * resident at once, so that the barriers cannot deadlock; the barrier's
 * release and acquire make each phase's writes visible to the next. */
#ifndef PIKV_BACKEND_CUDA_STEP_KERNEL_CUH
#define PIKV_BACKEND_CUDA_STEP_KERNEL_CUH

#include "backend/cuda/kernels.cuh"
#include "backend/cuda/weights.cuh"

#include <cooperative_groups.h>

namespace pkcuda {

/* Threads of a block of the step kernel, and its warps (the warps of a share
 * of decode attention). */
enum { STEP_THREADS = 256, STEP_WARPS = STEP_THREADS / 32 };

/* One layer as the step kernel reads it. */
struct step_layer {
    pk_cuda_layer w;
    float attn_scale;
};

template <typename W> struct step_args {
    rows_ctx<W> c;                /* rows_per_seq 1, seq0 0 */
    int n_seq, n_layer, F, V;
    float eps;
    const step_layer *layers;     /* device [n_layer] */
    const W *wte, *wpe, *lm_head;
    const float *ln_f_w, *ln_f_b;
    const int32_t *tokens;        /* [n_seq] */
    float *x, *q, *att, *fc;      /* [n_seq][C], [n_seq][C], [n_seq][C], [n_seq][F] */
    float *logits;                /* [n_seq][V] */
    int32_t *next;                /* [n_seq]: the greedy choices */
    float *part;                  /* decode attention's partial states and counts (decode_attention_share) */
    int *done;
    int n_split, per_split;
};

template <typename W, int R, int HD>
__global__ void __launch_bounds__(STEP_THREADS) decode_step_kernel(step_args<W> a)
{
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    __shared__ float red[32];
    __shared__ int best_i[32];
    __shared__ decode_shared<HD, STEP_WARPS> att_shared;
    float *xs = dynamic_shared(); /* [n_seq][max(C, F)] */
    const rows_ctx<W> &c = a.c;
    const int block = blockIdx.x, n_blocks = gridDim.x, C = c.C, n = a.n_seq;
    auto barrier = [&] { grid.sync(); };

    for (int row = block; row < n; row += n_blocks) embed_row(row, a.x, a.wte, a.wpe, a.tokens, c);
    for (int l = 0; l < a.n_layer; l++) {
        const step_layer &L = a.layers[l];
        gemv_block<W, R, true, float, EPI_QKV>(block, n_blocks, (const W *)L.w.attn_w, L.w.attn_b, a.x, n, C,
                                               L.w.ln_1_w, L.w.ln_1_b, a.eps, epilogue<W, float, EPI_QKV>{a.q, 3 * C, l, c},
                                               xs, red, barrier);
        barrier();
        const int shares = a.n_split * c.n_head * n;
        for (int i = block; i < shares; i += n_blocks)
            decode_attention_share<W, float, HD, STEP_WARPS>(i % a.n_split, a.n_split, i / a.n_split % c.n_head,
                                                            i / (a.n_split * c.n_head), a.q, a.att, l, L.attn_scale, c,
                                                            a.part, a.done, a.per_split, att_shared, [] {});
        gemv_block<W, R, false, float, EPI_RESIDUAL>(block, n_blocks, (const W *)L.w.attn_proj_w, L.w.attn_proj_b,
                                                     a.att, n, C, nullptr, nullptr, a.eps,
                                                     epilogue<W, float, EPI_RESIDUAL>{a.x, C, l, c}, xs, red, barrier);
        gemv_block<W, R, true, float, EPI_GELU>(block, n_blocks, (const W *)L.w.fc_w, L.w.fc_b, a.x, n, C, L.w.ln_2_w,
                                                L.w.ln_2_b, a.eps, epilogue<W, float, EPI_GELU>{a.fc, a.F, l, c}, xs,
                                                red, barrier);
        gemv_block<W, R, false, float, EPI_RESIDUAL>(block, n_blocks, (const W *)L.w.fc_proj_w, L.w.fc_proj_b, a.fc,
                                                     n, a.F, nullptr, nullptr, a.eps,
                                                     epilogue<W, float, EPI_RESIDUAL>{a.x, C, l, c}, xs, red, barrier);
    }
    /* Once the last layer is done nothing of this step reads the lengths or
     * positions again, so block 0 advances them while the LM head runs. */
    gemv_block<W, R, true, float, EPI_STORE>(block, n_blocks, a.lm_head, nullptr, a.x, n, C, a.ln_f_w, a.ln_f_b, a.eps,
                                             epilogue<W, float, EPI_STORE>{a.logits, a.V, 0, c}, xs, red, [&] {
                                                 barrier();
                                                 if (block == 0)
                                                     for (int i = threadIdx.x; i < n * c.n_lh; i += blockDim.x)
                                                         advance_head(c, i);
                                             });
    barrier();
    for (int row = block; row < n; row += n_blocks) argmax_row(row, a.logits, a.V, a.next, red, best_i);
}

} // namespace pkcuda

#endif
