/* Device kernels of the CUDA engine, templated on the storage type W of the
 * weights and the KV cache (float, __half or __nv_bfloat16). Activations and
 * accumulators are float32 throughout.
 *
 * A call runs R = n_seq * rows_per_seq rows: row i is token i % rows_per_seq of
 * the call in sequence seq0 + i / rows_per_seq. Positions and the heads' cache
 * lengths are read from device memory (seq_pos, kv_len), so a captured decode
 * step replays without being captured again; the last kernel of a call
 * advances them. */
#ifndef PIKV_BACKEND_CUDA_KERNELS_CUH
#define PIKV_BACKEND_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

/* KV entries of one head per block. */
#define PK_CUDA_BLOCK 16

namespace pkcuda {

template <typename W> __device__ __forceinline__ float to_f(W v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename W> __device__ __forceinline__ W from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* Elements of W in one 16-byte load. */
template <typename W> struct vec { static constexpr int n = 16 / sizeof(W); };

/* Load 16 bytes of W at p (16-byte aligned) as floats. */
template <typename W> __device__ __forceinline__ void load16(const W *p, float *f)
{
    uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
    const W *e = reinterpret_cast<const W *>(&u);
#pragma unroll
    for (int i = 0; i < vec<W>::n; i++) f[i] = to_f<W>(e[i]);
}

/* The launch's dynamic shared memory (tests/cuda/emulation.h supplies its own
 * when the kernels run on the host). */
#ifndef PK_CUDA_EMULATION
__device__ __forceinline__ float *dynamic_shared()
{
    extern __shared__ float4 pk_dynamic_shared[];
    return reinterpret_cast<float *>(pk_dynamic_shared);
}
#endif

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the result. `red` is shared scratch of 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float gelu_new(float x)
{
    return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* Where the rows of a call go, and the paged KV cache. */
template <typename W> struct rows_ctx {
    int seq0, rows_per_seq;
    int32_t *seq_pos;         /* [max_seq] */
    int32_t *kv_len;          /* [max_seq][n_layer * n_head]: entries before this call */
    const int32_t *table;     /* [max_seq][max_blocks][n_layer * n_head] */
    W *pool;                  /* blocks of [K: PK_CUDA_BLOCK][head_dim], [V: PK_CUDA_BLOCK][head_dim] */
    int max_blocks, n_lh, n_head, head_dim, C;
};

/* Address of (keys or values, dim 0) of entry `slot` of head lh of sequence b. */
template <typename W>
__device__ __forceinline__ W *kv_entry(const rows_ctx<W> &c, int b, int lh, int slot, int values)
{
    const int32_t blk = c.table[((size_t)b * c.max_blocks + slot / PK_CUDA_BLOCK) * c.n_lh + lh];
    return c.pool + ((size_t)blk * 2 + values) * PK_CUDA_BLOCK * c.head_dim + (size_t)(slot % PK_CUDA_BLOCK) * c.head_dim;
}

/* What a matrix product's epilogue does with v = (x · W)[row, j] + bias[j]. */
enum { EPI_STORE, EPI_RESIDUAL, EPI_GELU, EPI_QKV };

template <typename W, typename OutT, int EPI> struct epilogue {
    OutT *y;       /* [R][out] (EPI_QKV: the queries [R][C]) */
    int out;
    int layer;     /* EPI_QKV */
    rows_ctx<W> kv;

    __device__ __forceinline__ void operator()(int row, int j, float v) const
    {
        if (EPI == EPI_STORE) {
            y[(size_t)row * out + j] = from_f<OutT>(v);
        } else if (EPI == EPI_RESIDUAL) {
            float *r = reinterpret_cast<float *>(y) + (size_t)row * out + j;
            *r += v;
        } else if (EPI == EPI_GELU) {
            y[(size_t)row * out + j] = from_f<OutT>(gelu_new(v));
        } else { /* queries to y, keys and values into the cache at the row's slot */
            const int C = kv.C;
            if (j < C) {
                y[(size_t)row * C + j] = from_f<OutT>(v);
                return;
            }
            const int values = j >= 2 * C, c = j - C - values * C, h = c / kv.head_dim;
            const int b = kv.seq0 + row / kv.rows_per_seq, lh = layer * kv.n_head + h;
            const int slot = kv.kv_len[(size_t)b * kv.n_lh + lh] + row % kv.rows_per_seq;
            kv_entry(kv, b, lh, slot, values)[c % kv.head_dim] = from_f<W>(v);
        }
    }
};

/* x[row] = wte[token] + wpe[position]. One block per row. */
template <typename W>
__global__ void embed_kernel(float *x, const W *wte, const W *wpe, const int32_t *tokens, rows_ctx<W> c)
{
    const int row = blockIdx.x, b = c.seq0 + row / c.rows_per_seq;
    const int pos = c.seq_pos[b] + row % c.rows_per_seq;
    const W *te = wte + (size_t)tokens[row] * c.C, *pe = wpe + (size_t)pos * c.C;
    for (int i = threadIdx.x; i < c.C; i += blockDim.x) x[(size_t)row * c.C + i] = to_f<W>(te[i]) + to_f<W>(pe[i]);
}

/* Layer norm of row blockIdx.x of x [R][C] into out (the input type of the
 * following matrix product). */
template <typename OutT>
__global__ void layernorm_kernel(OutT *out, const float *x, const float *w, const float *bias, int C, float eps)
{
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * C;
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, red) / C;
    float v = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = rsqrtf(block_sum(v, red) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[(size_t)blockIdx.x * C + i] = from_f<OutT>((xr[i] - mean) * rstd * w[i] + bias[i]);
}

/* The epilogue over a float32 product [R][out] computed by cuBLAS. */
template <typename W, typename OutT, int EPI>
__global__ void epilogue_kernel(const float *prod, const float *bias, int R, epilogue<W, OutT, EPI> epi)
{
    const size_t n = (size_t)R * epi.out;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % epi.out);
        epi((int)(i / epi.out), j, prod[i] + (bias ? bias[j] : 0.f));
    }
}

/* Matrix-vector products for n_rows <= R rows (decode): y[r, j] = epi(xn[r] ·
 * Wt[j] + bias[j]) with Wt output-major [out][in], so that one warp reads one
 * output's weights contiguously. The rows of x are staged in shared memory,
 * layer-normed there first when LN. in must be a multiple of 16 / sizeof(W). */
template <typename W, int R, bool LN, typename OutT, int EPI>
__global__ void __launch_bounds__(256) gemv_kernel(const W *Wt, const float *bias, const float *x, int n_rows, int in,
                                                   const float *ln_w, const float *ln_b, float eps,
                                                   epilogue<W, OutT, EPI> epi)
{
    float *xs = dynamic_shared(); /* [n_rows][in] */
    __shared__ float red[32];
    for (int i = threadIdx.x; i < n_rows * in; i += blockDim.x) xs[i] = x[i];
    if (LN) {
        __syncthreads();
        for (int r = 0; r < n_rows; r++) {
            float *xr = xs + r * in;
            float s = 0.f;
            for (int i = threadIdx.x; i < in; i += blockDim.x) s += xr[i];
            const float mean = block_sum(s, red) / in;
            float v = 0.f;
            for (int i = threadIdx.x; i < in; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
            const float rstd = rsqrtf(block_sum(v, red) / in + eps);
            for (int i = threadIdx.x; i < in; i += blockDim.x) xr[i] = (xr[i] - mean) * rstd * ln_w[i] + ln_b[i];
        }
    }
    __syncthreads();
    constexpr int VN = vec<W>::n;
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int j = blockIdx.x * warps + (threadIdx.x >> 5); j < epi.out; j += gridDim.x * warps) {
        const W *wr = Wt + (size_t)j * in;
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = 0.f;
#pragma unroll 4
        for (int k = lane * VN; k < in; k += 32 * VN) {
            float wf[VN];
            load16(wr + k, wf);
#pragma unroll
            for (int r = 0; r < R; r++)
                if (r < n_rows)
#pragma unroll
                    for (int i = 0; i < VN; i++) acc[r] += wf[i] * xs[r * in + k + i];
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float v = warp_sum(acc[r]);
            if (lane == r && r < n_rows) epi(r, j, v + (bias ? bias[j] : 0.f));
        }
    }
}

/* Causal attention of each row's query over its head's block list, with an
 * online softmax over blocks of PK_CUDA_BLOCK keys: no score matrix is
 * materialised, whatever the context length. Grid (rows_per_seq, n_head,
 * n_seq); NW warps split the head's blocks and merge their partial softmax
 * states at the end. Row r of a sequence sees the kv_len entries cached before
 * the call and the call's rows 0..r. q [R][C] (scaled here), out [R][C]. */
template <typename W, typename OutT, int HD, int NW>
__global__ void __launch_bounds__(NW * 32) attention_kernel(const float *q, OutT *out, int layer, float scale,
                                                            rows_ctx<W> c)
{
    __shared__ float qs[HD];
    __shared__ float wm[NW], wl[NW];
    __shared__ float wacc[NW][HD];
    const int r = blockIdx.x, h = blockIdx.y, row = blockIdx.z * c.rows_per_seq + r;
    const int b = c.seq0 + blockIdx.z, lh = layer * c.n_head + h;
    const int visible = c.kv_len[(size_t)b * c.n_lh + lh] + r + 1;
    const int n_blocks = (visible + PK_CUDA_BLOCK - 1) / PK_CUDA_BLOCK;
    /* exp2 instead of exp: fold log2(e) into the scale. */
    const float qscale = scale * 1.4426950408889634f;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) qs[d] = q[(size_t)row * c.C + h * HD + d] * qscale;
    __syncthreads();

    constexpr int DPL = HD / 32;           /* value dims per lane */
    constexpr int KH = HD / 2;             /* key dims per lane: two lanes per key */
    constexpr int VN = vec<W>::n;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = lane >> 1, half = lane & 1;
    float m = -INFINITY, l = 0.f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;

    for (int blk = warp; blk < n_blocks; blk += NW) {
        const int32_t id = c.table[((size_t)b * c.max_blocks + blk) * c.n_lh + lh];
        const W *K = c.pool + (size_t)id * 2 * PK_CUDA_BLOCK * HD, *V = K + PK_CUDA_BLOCK * HD;
        const int n_valid = min(PK_CUDA_BLOCK, visible - blk * PK_CUDA_BLOCK);
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < KH; k += VN) {
            float kf[VN];
            load16(K + e * HD + half * KH + k, kf);
#pragma unroll
            for (int i = 0; i < VN; i++) s += kf[i] * qs[half * KH + k + i];
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s = e < n_valid ? s : -INFINITY;
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = exp2f(m - m_new);
        const float p = e < n_valid ? exp2f(s - m_new) : 0.f;
        l = l * corr + warp_sum(half ? 0.f : p);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
        for (int j = 0; j < n_valid; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, 2 * j);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] += pj * to_f<W>(V[j * HD + lane * DPL + i]);
        }
        m = m_new;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) wacc[warp][lane * DPL + i] = acc[i];
    __syncthreads();
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float M = -INFINITY;
        for (int w = 0; w < NW; w++) M = fmaxf(M, wm[w]);
        float L = 0.f, o = 0.f;
        for (int w = 0; w < NW; w++) {
            const float f = wl[w] > 0.f ? exp2f(wm[w] - M) : 0.f;
            L += wl[w] * f;
            o += wacc[w][d] * f;
        }
        out[(size_t)row * c.C + h * HD + d] = from_f<OutT>(o / L);
    }
}

/* After a call: every head of its sequences holds rows_per_seq more entries
 * and every sequence is that much further on. */
template <typename W> __global__ void advance_kernel(rows_ctx<W> c, int n_seq)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * c.n_lh) return;
    const int b = c.seq0 + i / c.n_lh;
    c.kv_len[(size_t)b * c.n_lh + i % c.n_lh] += c.rows_per_seq;
    if (i % c.n_lh == 0) c.seq_pos[b] += c.rows_per_seq;
}

} // namespace pkcuda

#endif
