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

/* 16 bytes of W as floats. */
template <typename W> __device__ __forceinline__ void unpack16(uint4 u, float *f)
{
    const W *e = reinterpret_cast<const W *>(&u);
#pragma unroll
    for (int i = 0; i < vec<W>::n; i++) f[i] = to_f<W>(e[i]);
}

/* 16 bytes of W at p (16-byte aligned), read through the read-only path. */
template <typename W> __device__ __forceinline__ uint4 load16(const W *p)
{
    return __ldg(reinterpret_cast<const uint4 *>(p));
}

/* Programmatic dependent launch (Hopper and later). A kernel launched with
 * the programmatic-serialization attribute may start while the kernel before
 * it is still running; until it calls wait_for_previous_kernel() it must read
 * only what no kernel of the step writes (the weights, the block table, the
 * heads' lengths before the step), so that its launch and first weight loads
 * overlap the previous kernel's tail. allow_next_kernel() lets the kernel
 * after it start early in turn. Before sm_90 and in host emulation both do
 * nothing and kernels run one after another. */
__device__ __forceinline__ void wait_for_previous_kernel()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_kernel()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
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

/* N sums over the block at once (blockDim.x a multiple of 32, at most 1024),
 * so that N rows cost one round of barriers, not N; every thread gets the
 * results. `red` is shared scratch of 32 * N floats. */
template <int N> __device__ __forceinline__ void block_sums(float (&v)[N], float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int n = 0; n < N; n++) v[n] = warp_sum(v[n]);
    __syncthreads();
    if (lane == 0)
#pragma unroll
        for (int n = 0; n < N; n++) red[n * 32 + warp] = v[n];
    __syncthreads();
#pragma unroll
    for (int n = 0; n < N; n++) v[n] = warp_sum(lane < nw ? red[n * 32 + lane] : 0.f);
}

/* Sum over the block; `red` is shared scratch of 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    float s[1] = {v};
    block_sums(s, red);
    return s[0];
}

/* Dimension d of n merged softmax states (max m(i), sum l(i), weighted
 * values acc(i), each read through its function): returns the merged
 * weighted value and sets the merged max and sum. States that saw no key
 * (l = 0) count for nothing. */
template <typename MF, typename LF, typename AccF>
__device__ __forceinline__ float merge_states(int n, MF m, LF l, AccF acc, float &M, float &L)
{
    M = -INFINITY;
    for (int i = 0; i < n; i++) M = fmaxf(M, m(i));
    float o = 0.f;
    L = 0.f;
    for (int i = 0; i < n; i++) {
        const float li = l(i), f = li > 0.f ? exp2f(m(i) - M) : 0.f;
        L += li * f;
        o += acc(i) * f;
    }
    return o;
}

/* merge_states over n states stored one after another as [hd + 2] floats
 * (weighted values, then max and sum), read through load(offset). */
template <typename LoadF>
__device__ __forceinline__ float merge_parts(int n, int hd, int d, LoadF load, float &M, float &L)
{
    const int stride = hd + 2;
    return merge_states(
        n, [&](int i) { return load(i * stride + hd); }, [&](int i) { return load(i * stride + hd + 1); },
        [&](int i) { return load(i * stride + d); }, M, L);
}

/* Start copying n floats (n a multiple of 4, both pointers 16-byte aligned)
 * from global to shared memory, the block's threads 16 bytes each in turn.
 * On the GPU the copies are asynchronous (cp.async, straight to shared memory
 * without registers), so that every one of them is in flight at once however
 * wide the rows: a plain copy loop waits a round trip per element it moves.
 * They bypass L1, so they see what an earlier kernel wrote. stage_wait() and
 * a barrier make them visible to the block. */
__device__ __forceinline__ void stage(float *dst, const float *src, int n)
{
    for (int i = threadIdx.x * 4; i < n; i += blockDim.x * 4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        const unsigned d = (unsigned)__cvta_generic_to_shared(dst + i);
        asm volatile("{ .reg .u64 g; cvta.to.global.u64 g, %1; cp.async.cg.shared.global [%0], [g], 16; }" ::"r"(d),
                     "l"(src + i)
                     : "memory");
#else
        *reinterpret_cast<float4 *>(dst + i) = *reinterpret_cast<const float4 *>(src + i);
#endif
    }
}

/* Wait for this thread's copies started by stage(). */
__device__ __forceinline__ void stage_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

__device__ __forceinline__ float gelu_new(float x)
{
    return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* A streaming head's ring (DuoAttention): once the head holds sink + recent
 * entries, a decoded token overwrites slot `next`, the oldest of the recent
 * window, and `next` moves on over slots sink..sink+recent-1. GPT-2 has no
 * rotary embedding, so where in the head an entry sits does not change the
 * arithmetic. recent == 0 for a full head. A head whose entries a session
 * holds only part of, its last entries being on another GPU
 * (engine/cuda/group_cuda.h), is detached: it takes no new entries, decoded
 * tokens go to the GPU that holds its tail. */
struct ring_state {
    int32_t sink, recent, next, detached;
};

/* Whether a head of len entries is a full ring: a decoded token replaces an entry instead of adding one. */
__device__ __host__ __forceinline__ bool ring_full(const ring_state &r, int len)
{
    return r.recent > 0 && len == r.sink + r.recent;
}

/* A head of len entries after a call of `rows` tokens: a full ring moves on
 * to its next slot for one token, every other head grows. The one rule for
 * the device (advance_kernel) and the host's copy of it. */
__device__ __host__ __forceinline__ void ring_advance(ring_state &r, int32_t &len, int rows)
{
    if (r.detached) return;
    if (rows == 1 && ring_full(r, len))
        r.next = r.sink + (r.next - r.sink + 1) % r.recent;
    else
        len += rows;
}

/* The entries a head of len entries holds after n_more decoded tokens: a
 * ring stops growing at its window. */
__device__ __host__ __forceinline__ int entries_after(const ring_state &r, int len, int n_more)
{
    const int grown = r.detached ? len : len + n_more;
    return r.recent > 0 && grown > r.sink + r.recent ? r.sink + r.recent : grown;
}

/* Where the rows of a call go, and the paged KV cache. */
template <typename W> struct rows_ctx {
    int seq0, rows_per_seq;
    int32_t *seq_pos;         /* [max_seq] */
    int32_t *kv_len;          /* [max_seq][n_layer * n_head]: entries before this call */
    ring_state *ring;         /* [max_seq][n_layer * n_head] */
    const int32_t *table;     /* [max_seq][max_blocks][n_layer * n_head] */
    W *pool;                  /* blocks of [K: PK_CUDA_BLOCK][head_dim], [V: PK_CUDA_BLOCK][head_dim] */
    W *discard;               /* [max_seq][2C]: where a detached head's new keys and values go, never read */
    int max_blocks, n_lh, n_head, head_dim, C;
    /* Query-time routing of sequence route_seq (-1: none; engine/cuda/routing_cuda.h):
     * slot j < route_len[lh] of head lh is read by a row of the call only when
     * route_slot[lh * route_stride + j] shares a bit with the row's
     * route_row[row * n_head + h]; later slots are read by every row. Only
     * the attention kernels' ROUTED variants read this, so that calls that do
     * not route pay nothing for it. */
    int route_seq, route_stride;
    const int32_t *route_len;        /* [n_layer * n_head] */
    const uint64_t *route_slot;      /* [n_layer * n_head][route_stride] */
    const uint64_t *route_row;       /* [rows][n_head] */
};

/* What one row of a call reads of one head under query-time routing: the
 * masks of the first `len` slots and the row's own (len 0: every slot). */
struct row_routing {
    const uint64_t *slot;
    int len;
    uint64_t row;
};

template <typename W>
__device__ __host__ __forceinline__ row_routing routing_of(const rows_ctx<W> &c, int b, int lh, int h, int row)
{
    if (b != c.route_seq) return row_routing{nullptr, 0, 0};
    return row_routing{c.route_slot + (size_t)lh * c.route_stride, c.route_len[lh],
                       c.route_row[(size_t)row * c.n_head + h]};
}

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

    /* Where output j of `row` goes: into y, or for EPI_QKV's keys and values
     * to the row's slot in the cache. It reads only what no kernel of a step
     * writes (heads' lengths and rings and the block table change between
     * steps), so that gemv_kernel can find it before waiting for the kernel
     * before it. */
    __device__ __forceinline__ void *where(int row, int j) const
    {
        if (EPI == EPI_RESIDUAL) return reinterpret_cast<float *>(y) + (size_t)row * out + j;
        if (EPI != EPI_QKV) return y + (size_t)row * out + j;
        const int C = kv.C;
        if (j < C) return y + (size_t)row * C + j;
        const int values = j >= 2 * C, c = j - C - values * C, h = c / kv.head_dim;
        const int b = kv.seq0 + row / kv.rows_per_seq, lh = layer * kv.n_head + h;
        const size_t bh = (size_t)b * kv.n_lh + lh;
        if (kv.ring[bh].detached) return kv.discard + (size_t)row * 2 * C + (j - C);
        const int len = kv.kv_len[bh];
        const int slot = kv.rows_per_seq == 1 && ring_full(kv.ring[bh], len) ? kv.ring[bh].next
                                                                              : len + row % kv.rows_per_seq;
        return kv_entry(kv, b, lh, slot, values) + c % kv.head_dim;
    }

    /* What output p = where(row, j) adds to: the residual stream's value
     * (written by earlier kernels, so read only after waiting for them). */
    __device__ __forceinline__ float before(const void *p) const
    {
        return EPI == EPI_RESIDUAL ? *static_cast<const float *>(p) : 0.f;
    }

    /* Output j, v = (x · W)[row, j] + bias[j], to p = where(row, j); base = before(p). */
    __device__ __forceinline__ void put(void *p, int j, float v, float base) const
    {
        if (EPI == EPI_RESIDUAL)
            *static_cast<float *>(p) = base + v;
        else if (EPI == EPI_GELU)
            *static_cast<OutT *>(p) = from_f<OutT>(gelu_new(v));
        else if (EPI == EPI_QKV && j >= kv.C) /* a key or value */
            *static_cast<W *>(p) = from_f<W>(v);
        else
            *static_cast<OutT *>(p) = from_f<OutT>(v);
    }

    __device__ __forceinline__ void operator()(int row, int j, float v) const
    {
        void *p = where(row, j);
        put(p, j, v, before(p));
    }
};

/* x[row] = wte[token] + wpe[position]. One block per row. */
template <typename W>
__global__ void embed_kernel(float *x, const W *wte, const float *wpe, const int32_t *tokens, rows_ctx<W> c)
{
    const int row = blockIdx.x, b = c.seq0 + row / c.rows_per_seq;
    const int pos = c.seq_pos[b] + row % c.rows_per_seq;
    const W *te = wte + (size_t)tokens[row] * c.C;
    const float *pe = wpe + (size_t)pos * c.C;
    for (int i = threadIdx.x; i < c.C; i += blockDim.x) x[(size_t)row * c.C + i] = to_f<W>(te[i]) + pe[i];
}

/* Layer norm of one row xr [C] into out [C], by the block; red is shared scratch of 32 floats. */
template <typename OutT>
__device__ __forceinline__ void layernorm_row(OutT *out, const float *xr, const float *w, const float *bias, int C,
                                              float eps, float *red)
{
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, red) / C;
    float v = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = rsqrtf(block_sum(v, red) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[i] = from_f<OutT>((xr[i] - mean) * rstd * w[i] + bias[i]);
}

/* Layer norm of row blockIdx.x of x [R][C] into out (the input type of the
 * following matrix product). */
template <typename OutT>
__global__ void layernorm_kernel(OutT *out, const float *x, const float *w, const float *bias, int C, float eps)
{
    __shared__ float red[32];
    layernorm_row(out + (size_t)blockIdx.x * C, x + (size_t)blockIdx.x * C, w, bias, C, eps, red);
}

/* The cuBLAS path's residual epilogue and the next layer norm in one launch:
 * row blockIdx.x of x [R][C] gets prod + bias added, then its layer norm goes
 * to out. Each thread adds the elements it later reads first, and block_sum
 * synchronises before any other thread's are read, so the sums see the new
 * row; the arithmetic is the two kernels' own. */
template <typename OutT>
__global__ void residual_layernorm_kernel(OutT *out, float *x, const float *prod, const float *add_bias,
                                          const float *w, const float *bias, int C, float eps)
{
    __shared__ float red[32];
    float *xr = x + (size_t)blockIdx.x * C;
    const float *pr = prod + (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) xr[i] += pr[i] + add_bias[i];
    layernorm_row(out + (size_t)blockIdx.x * C, xr, w, bias, C, eps, red);
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

/* acc[r] += w · x[r][k .. k + VN) for rows r < R of x, w being 16 bytes of W.
 * Rows from n_rows on repeat the last row (their sums are never used), so
 * that no branch separates the loads of a warp from one another. x is read
 * from shared memory 16 bytes at a time: lanes are VN floats apart, so one
 * float per read would put 8 lanes on the same bank. */
template <typename W, int R>
__device__ __forceinline__ void dot_chunk(float *acc, uint4 w, const float *xs, int n_rows, int in, int k)
{
    constexpr int VN = vec<W>::n;
    float wf[VN];
    unpack16<W>(w, wf);
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float4 *xv = reinterpret_cast<const float4 *>(xs + (r < n_rows ? r : n_rows - 1) * in + k);
#pragma unroll
        for (int i = 0; i < VN / 4; i++) {
            const float4 x4 = xv[i];
            acc[r] += wf[4 * i] * x4.x;
            acc[r] += wf[4 * i + 1] * x4.y;
            acc[r] += wf[4 * i + 2] * x4.z;
            acc[r] += wf[4 * i + 3] * x4.w;
        }
    }
}

/* The 16-byte weight loads a lane of gemv_kernel holds at once, for R rows:
 * its whole part of a row when that fits, all issued before any arithmetic
 * uses them. More rows need more registers for their sums and reads of x, so
 * hold fewer loads: with these, and the register bound of gemv_min_blocks,
 * ptxas spills nothing at 1, 2 and 4 rows. */
__host__ __device__ constexpr int gemv_loads(int R) { return R == 1 ? 8 : R <= 4 ? 4 : 2; }

/* Blocks of 256 threads a multiprocessor must fit, which bounds registers:
 * 64 a thread, or 80 for 4 rows (whose shared memory for wide rows fits 3
 * blocks anyway). */
__host__ __device__ constexpr int gemv_min_blocks(int R) { return R == 4 ? 3 : 4; }

/* Layer norm in place of rows 0..n_rows-1 of xs [n_rows][in] with weights w
 * and b [in], by the block. All rows' sums go through one block reduction,
 * then all their squared deviations through another; red is shared scratch
 * of 32 * R floats. */
template <int R>
__device__ __forceinline__ void layernorm_rows(float *xs, int n_rows, int in, const float *w, const float *b, float eps,
                                               float *red)
{
    float sum[R], mean[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        sum[r] = 0.f;
        if (r < n_rows)
            for (int i = threadIdx.x; i < in; i += blockDim.x) sum[r] += xs[r * in + i];
    }
    block_sums(sum, red);
#pragma unroll
    for (int r = 0; r < R; r++) {
        mean[r] = sum[r] / in;
        sum[r] = 0.f;
        if (r < n_rows)
            for (int i = threadIdx.x; i < in; i += blockDim.x) {
                const float d = xs[r * in + i] - mean[r];
                sum[r] += d * d;
            }
    }
    block_sums(sum, red);
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r < n_rows) {
            const float rstd = rsqrtf(sum[r] / in + eps);
            for (int i = threadIdx.x; i < in; i += blockDim.x)
                xs[r * in + i] = (xs[r * in + i] - mean[r]) * rstd * w[i] + b[i];
        }
}

/* The one input row of a matrix-vector product given as decode attention's
 * split states (attention_decode_kernel with done NULL): in / head_dim heads,
 * each n_split states of [head_dim + 2] floats one after another. n_split 0:
 * the input is rows of x. */
struct split_input {
    int n_split, head_dim;
};

/* Floats of a split_input for a row of `in`. */
__host__ __device__ inline int split_input_floats(split_input p, int in)
{
    return in / p.head_dim * p.n_split * (p.head_dim + 2);
}

/* The row xs [in] from the split states st, by the block: each head's states
 * merged exactly as the split attention's last block merges them. */
__device__ __forceinline__ void merge_split_input(float *xs, const float *st, int in, split_input p)
{
    for (int d = threadIdx.x; d < in; d += blockDim.x) {
        const float *head = st + (size_t)(d / p.head_dim) * p.n_split * (p.head_dim + 2);
        float M, L;
        const float o = merge_parts(p.n_split, p.head_dim, d % p.head_dim, [&](int k) { return head[k]; }, M, L);
        xs[d] = o / L;
    }
}

/* Matrix-vector products for n_rows <= R rows (decode): y[r, j] = epi(xn[r] ·
 * Wt[j] + bias[j]) with Wt output-major [out][in], layer-normed rows xn when
 * LN. in must be a multiple of 16 / sizeof(W).
 *
 * `split` warps of a block (a power of two that divides the block's warps)
 * share each output: warp w takes part w % split of the row of output
 * blockIdx.x * (warps / split) + w / split, a run of 32 * ceil(in / (VN * 32
 * * split)) 16-byte vectors, and the parts' sums meet in shared memory, added
 * in a fixed order. The host picks the split (engine.cu) so that a part fits
 * the gemv_loads(R) loads a lane holds: then each warp issues every load of
 * its part at once, and a wide row is one round trip, not one per few loads.
 * Blocks stride over the outputs in rounds (the LM head has far more
 * outputs than warps), all warps of a block taking part in every round.
 *
 * Everything that no kernel of the step writes is read before waiting for
 * the previous kernel, so that it is in flight while that kernel finishes:
 * the first round's weights, bias and destinations (the KV slots of
 * EPI_QKV) and the layer-norm weights. Right after the wait come the
 * residual stream's values that EPI_RESIDUAL adds to and the rows of x,
 * copied to shared memory (with ln_w and ln_b after them: dynamic shared
 * memory of (n_rows + 2 * LN) * in floats). With `parts` (one row, no layer
 * norm) x holds decode attention's split states instead, copied after the
 * row's place (split_input_floats more) and merged into it. */
template <typename W, int R, bool LN, typename OutT, int EPI>
__global__ void __launch_bounds__(256, gemv_min_blocks(R))
    gemv_kernel(const W *Wt, const float *bias, const float *x, int n_rows, int in, int split, const float *ln_w,
                const float *ln_b, float eps, split_input parts, epilogue<W, OutT, EPI> epi)
{
    constexpr int VN = vec<W>::n, NL = gemv_loads(R);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per_block = (blockDim.x >> 5) / split;
    const int part = warp % split, nv = in / VN, span = (nv + 32 * split - 1) / (32 * split) * 32;
    const int v0 = min(nv, part * span), v1 = min(nv, v0 + span);
    const bool leader = part == 0 && lane < n_rows; /* writes output j of row `lane` */
    __shared__ float red[32 * R];
    __shared__ float partial[2][8][R]; /* [round % 2][warp][row]; 256 threads at most */
    float *xs = dynamic_shared();      /* [n_rows][in], then ln_w and ln_b */
    allow_next_kernel();

    uint4 w[NL];
    /* Part v0..v1 of output j's weights from vector v on: up to NL loads a lane. */
    auto load = [&](int j, int v) {
#pragma unroll
        for (int p = 0; p < NL; p++) {
            const int k = v + p * 32 + lane;
            w[p] = j < epi.out && k < v1 ? load16(Wt + (size_t)j * in + (size_t)k * VN) : make_uint4(0, 0, 0, 0);
        }
    };
    int j = blockIdx.x * per_block + warp / split;
    load(j, v0);
    if (LN) {
        stage(xs + n_rows * in, ln_w, in);
        stage(xs + (n_rows + 1) * in, ln_b, in);
    }
    float bias_j = bias && j < epi.out ? bias[j] : 0.f;
    void *dst = leader && j < epi.out ? epi.where(lane, j) : nullptr;
    wait_for_previous_kernel();

    float base = dst ? epi.before(dst) : 0.f;
    if (parts.n_split) {
        stage(xs + in, x, split_input_floats(parts, in));
        stage_wait();
        __syncthreads();
        merge_split_input(xs, xs + in, in, parts);
    } else {
        stage(xs, x, n_rows * in);
        stage_wait();
    }
    __syncthreads();
    if (LN) {
        layernorm_rows<R>(xs, n_rows, in, xs + n_rows * in, xs + (n_rows + 1) * in, eps, red);
        __syncthreads();
    }
    for (int g = blockIdx.x, round = 0; g * per_block < epi.out; g += gridDim.x, round++) {
        if (round > 0) j = g * per_block + warp / split;
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = 0.f;
        for (int v = v0; v < v1; v += 32 * NL) {
            if (round > 0 || v > v0) load(j, v);
            /* Groups of 32 vectors with a lane in the part; the weights past v1 are zero. */
            const int groups = (v1 - v + 31) / 32;
#pragma unroll
            for (int p = 0; p < NL; p++)
                if (p < groups) dot_chunk<W, R>(acc, w[p], xs, n_rows, in, min(v + p * 32 + lane, v1 - 1) * VN);
        }
        float *mine = partial[round & 1][warp];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float s = warp_sum(acc[r]);
            if (lane == r) mine[r] = s;
        }
        /* With one warp an output, each leader reads back only its own write. */
        if (split > 1) __syncthreads();
        if (leader && j < epi.out) {
            float v = 0.f;
            for (int p = 0; p < split; p++) v += partial[round & 1][warp + p][lane];
            if (round > 0) {
                bias_j = bias ? bias[j] : 0.f;
                dst = epi.where(lane, j);
                base = epi.before(dst);
            }
            epi.put(dst, j, v + bias_j, base);
        }
    }
}

/* A warp's online-softmax state over the keys it has seen, in log2 units:
 * the running maximum m, the sum l of exp2(score - m), and each lane's share
 * of the weighted values (HD / 32 dimensions). */
template <int HD> struct softmax_state {
    float m, l, acc[HD / 32];
};

template <int HD> __device__ __forceinline__ void softmax_init(softmax_state<HD> &st)
{
    st.m = -INFINITY;
    st.l = 0.f;
#pragma unroll
    for (int i = 0; i < HD / 32; i++) st.acc[i] = 0.f;
}

/* Fold entries first..end-1 of one KV block (keys K, then its values) into a
 * warp's state; qs is the scaled query, and the range is never empty, though
 * the routing (the block's first entry being slot slot0) may skip all of it. Two
 * lanes share a key, each taking half of its dimensions; then every lane owns
 * HD / 32 value dimensions. Keys and values are loaded together before any
 * arithmetic, so that both loads are in flight at once; entries outside the
 * range are loaded (the block is whole) but never used. */
template <typename W, int HD, bool ROUTED>
__device__ __forceinline__ void attend_block(softmax_state<HD> &st, const W *K, int first, int end, const float *qs,
                                             const row_routing &routing, int slot0)
{
    constexpr int DPL = HD / 32, KH = HD / 2, VN = vec<W>::n;
    const int lane = threadIdx.x & 31, e = lane >> 1, half = lane & 1;
    const W *V = K + PK_CUDA_BLOCK * HD;
    uint4 kr[KH / VN];
    W vr[PK_CUDA_BLOCK][DPL];
#pragma unroll
    for (int k = 0; k < KH / VN; k++) kr[k] = load16(K + e * HD + half * KH + k * VN);
#pragma unroll
    for (int j = 0; j < PK_CUDA_BLOCK; j++)
#pragma unroll
        for (int i = 0; i < DPL; i++) vr[j][i] = V[j * HD + lane * DPL + i];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < KH / VN; k++) {
        float kf[VN];
        unpack16<W>(kr[k], kf);
#pragma unroll
        for (int i = 0; i < VN; i++) s += kf[i] * qs[half * KH + k * VN + i];
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    bool used = e >= first && e < end;
    if (ROUTED && used && slot0 + e < routing.len) used = (routing.slot[slot0 + e] & routing.row) != 0;
    s = used ? s : -INFINITY;
    const float m_new = fmaxf(st.m, warp_max(s));
    /* Nothing seen yet and nothing here (a block the routing skips whole). */
    if (ROUTED && m_new == -INFINITY) return;
    const float corr = exp2f(st.m - m_new);
    const float p = used ? exp2f(s - m_new) : 0.f;
    st.l = st.l * corr + warp_sum(half ? 0.f : p);
#pragma unroll
    for (int i = 0; i < DPL; i++) st.acc[i] *= corr;
#pragma unroll
    for (int j = 0; j < PK_CUDA_BLOCK; j++) {
        const float pj = __shfl_sync(0xffffffffu, p, 2 * j);
        if (j >= first && j < end) /* a slot the routing skips adds 0 x its (finite) values */
#pragma unroll
            for (int i = 0; i < DPL; i++) st.acc[i] += pj * to_f<W>(vr[j][i]);
    }
    st.m = m_new;
}

/* The states of a block's NW warps, in shared memory, to be merged. */
template <int HD, int NW> struct warp_states {
    float m[NW], l[NW], acc[NW][HD];
};

template <int HD, int NW> __device__ __forceinline__ void publish_state(warp_states<HD, NW> &ws, const softmax_state<HD> &st)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        ws.m[warp] = st.m;
        ws.l[warp] = st.l;
    }
#pragma unroll
    for (int i = 0; i < HD / 32; i++) ws.acc[warp][lane * (HD / 32) + i] = st.acc[i];
}

/* Dimension d of a block's NW warp states, merged. */
template <int HD, int NW>
__device__ __forceinline__ float merge_warps(const warp_states<HD, NW> &ws, int d, float &M, float &L)
{
    return merge_states(
        NW, [&](int w) { return ws.m[w]; }, [&](int w) { return ws.l[w]; }, [&](int w) { return ws.acc[w][d]; }, M, L);
}

/* The query of head h for row `row`, scaled (exp2 instead of exp: log2(e) is
 * folded into the scale), into shared memory. */
template <int HD> __device__ __forceinline__ void stage_query(float *qs, const float *q, int row, int h, int C, float scale)
{
    const float qscale = scale * 1.4426950408889634f;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) qs[d] = q[(size_t)row * C + h * HD + d] * qscale;
}

/* Causal attention of each row's query over its head's block list, with an
 * online softmax over blocks of PK_CUDA_BLOCK keys: no score matrix is
 * materialised, whatever the context length. Grid (rows_per_seq, n_head,
 * n_seq); NW warps split the head's blocks and merge their states at the end.
 * Row r of a sequence sees the kv_len entries cached before the call and the
 * call's rows 0..r. A streaming head (a ring, which a multi-row call finds
 * in position order: its sinks, then consecutive positions) shows row r only
 * its sinks and the last `recent` of those slots, the CPU's window mask
 * (kv/kvcache.h) in slot terms. q [R][C] (scaled here), out [R][C]. */
template <typename W, typename OutT, int HD, int NW, bool ROUTED = false>
__global__ void __launch_bounds__(NW * 32) attention_kernel(const float *q, OutT *out, int layer, float scale,
                                                            rows_ctx<W> c)
{
    constexpr int B = PK_CUDA_BLOCK;
    __shared__ float qs[HD];
    __shared__ warp_states<HD, NW> ws;
    const int r = blockIdx.x, h = blockIdx.y, row = blockIdx.z * c.rows_per_seq + r;
    const int b = c.seq0 + blockIdx.z, lh = layer * c.n_head + h;
    const ring_state ring = c.ring[(size_t)b * c.n_lh + lh];
    /* Visible: slots [0, sinks) and [window, seen); for a full head sinks = seen. */
    const int seen = c.kv_len[(size_t)b * c.n_lh + lh] + r + 1;
    const int sinks = ring.recent > 0 ? min(ring.sink, seen) : seen;
    const int window = ring.recent > 0 ? max(sinks, seen - ring.recent) : seen;
    const int n_sink_blocks = (sinks + B - 1) / B, first_window_block = window / B;
    const int n_blocks = n_sink_blocks + (window < seen ? (seen + B - 1) / B - first_window_block : 0);
    wait_for_previous_kernel();
    /* The rows' routing is written during the call, before this kernel. */
    const row_routing routing = ROUTED ? routing_of(c, b, lh, h, row) : row_routing{nullptr, 0, 0};
    stage_query<HD>(qs, q, row, h, c.C, scale);
    __syncthreads();
    softmax_state<HD> st;
    softmax_init(st);
    for (int i = threadIdx.x >> 5; i < n_blocks; i += NW) {
        const bool in_sinks = i < n_sink_blocks;
        const int blk = in_sinks ? i : first_window_block + i - n_sink_blocks;
        const int32_t id = c.table[((size_t)b * c.max_blocks + blk) * c.n_lh + lh];
        attend_block<W, HD, ROUTED>(st, c.pool + (size_t)id * 2 * B * HD, in_sinks ? 0 : max(0, window - blk * B),
                            min(B, (in_sinks ? sinks : seen) - blk * B), qs, routing, blk * B);
    }
    publish_state(ws, st);
    __syncthreads();
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float M, L;
        const float o = merge_warps(ws, d, M, L);
        out[(size_t)row * c.C + h * HD + d] = from_f<OutT>(o / L);
    }
}

/* Decode attention (one row per sequence) split over the context, so that a
 * few heads still fill the GPU: grid (n_split, n_head, n_seq). Block `split`
 * of a head takes an equal share of the head's KV blocks, and at least one
 * for each of its warps (per_split = 0; the later splits of a short context
 * are then empty), or KV blocks split * per_split onwards, per_split of them
 * (heads of unequal lengths: a short head leaves its later splits empty
 * instead of making the long heads' shares the tail), its NW warps one block
 * at a time, and writes its merged state (weighted values, max, sum) to part
 * [max_seq][n_head][n_split][HD + 2]. The last block of the head to finish,
 * counted in done [max_seq][n_head], merges the n_split states into out and
 * sets the count back to zero for the next step. With `states` (a session
 * that holds part of each head, engine/cuda/group_cuda.h), it writes the
 * merged state instead, [n_seq][n_head][HD + 2] like a part, for
 * merge_ranks_kernel to merge with the other GPUs' states. With done NULL no
 * block merges: the parts stay for the next kernel, which merges them as it
 * reads them (gemv_kernel's split_input), so that the step waits for no
 * fence, count and second read of the parts here. */
template <typename W, typename OutT, int HD, int NW, bool ROUTED = false>
__global__ void __launch_bounds__(NW * 32) attention_decode_kernel(const float *q, OutT *out, int layer, float scale,
                                                                   rows_ctx<W> c, float *part, int *done,
                                                                   int per_split, float *states)
{
    __shared__ float qs[HD];
    __shared__ warp_states<HD, NW> ws;
    __shared__ int is_last;
    const int split = blockIdx.x, n_split = gridDim.x, h = blockIdx.y, row = blockIdx.z;
    const int b = c.seq0 + row, lh = layer * c.n_head + h;
    allow_next_kernel();
    /* Lengths before the step and the block table change only between steps.
     * A full ring's new entry replaced one instead of adding one, and a
     * detached head's went to another GPU. */
    const int len = c.kv_len[(size_t)b * c.n_lh + lh];
    const ring_state ring = c.ring[(size_t)b * c.n_lh + lh];
    const int visible = ring.detached || ring_full(ring, len) ? len : len + 1;
    const int n_blocks = (visible + PK_CUDA_BLOCK - 1) / PK_CUDA_BLOCK;
    /* A split whose warps would read less than a KV block each spends its
     * time on the merge rather than on the cache: fewer, fuller splits are
     * faster (docs/cuda.md). Empty splits still count in `done`. */
    const int per = per_split > 0 ? per_split : max((n_blocks + n_split - 1) / n_split, NW);
    const int first = split * per, end = min(n_blocks, first + per);
    wait_for_previous_kernel();
    /* The rows' routing is written during the call, before this kernel. */
    const row_routing routing = ROUTED ? routing_of(c, b, lh, h, row) : row_routing{nullptr, 0, 0};
    stage_query<HD>(qs, q, row, h, c.C, scale);
    __syncthreads();
    softmax_state<HD> st;
    softmax_init(st);
    for (int blk = first + (threadIdx.x >> 5); blk < end; blk += NW) {
        const int32_t id = c.table[((size_t)b * c.max_blocks + blk) * c.n_lh + lh];
        attend_block<W, HD, ROUTED>(st, c.pool + (size_t)id * 2 * PK_CUDA_BLOCK * HD, 0,
                            min(PK_CUDA_BLOCK, visible - blk * PK_CUDA_BLOCK), qs, routing, blk * PK_CUDA_BLOCK);
    }
    publish_state(ws, st);
    __syncthreads();
    float *head_parts = part + (size_t)(b * c.n_head + h) * n_split * (HD + 2);
    float *mine = head_parts + (size_t)split * (HD + 2);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float M, L;
        mine[d] = merge_warps(ws, d, M, L);
        if (d == 0) {
            mine[HD] = M;
            mine[HD + 1] = L;
        }
    }
    if (!done) return;
    /* Publish this block's state before counting it; the last block reads
     * every state past the (incoherent) L1. */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&done[b * c.n_head + h], 1) == n_split - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float M, L;
        const float o = merge_parts(n_split, HD, d, [&](int k) { return __ldcg(head_parts + k); }, M, L);
        if (!states) {
            out[(size_t)row * c.C + h * HD + d] = from_f<OutT>(o / L);
            continue;
        }
        float *state = states + ((size_t)row * c.n_head + h) * (HD + 2);
        state[d] = o;
        if (d == 0) {
            state[HD] = M;
            state[HD + 1] = L;
        }
    }
    if (threadIdx.x == 0) done[b * c.n_head + h] = 0;
}

/* The attention output of every (sequence, head) from the states of all
 * n_rank GPUs, gathered [n_rank][n_seq][n_head][HD + 2], merged in rank order
 * so that every GPU gets the same bits; a GPU that holds none of a head
 * contributes a state with sum 0, and the GPU with the head's tail holds at
 * least the new token. Grid (n_head, n_seq), HD threads. */
template <typename OutT, int HD>
__global__ void merge_ranks_kernel(const float *gathered, int n_rank, OutT *out, int C)
{
    const int h = blockIdx.x, row = blockIdx.y, d = threadIdx.x, n_head = gridDim.x;
    const size_t rank_stride = (size_t)gridDim.y * n_head * (HD + 2);
    const float *first = gathered + ((size_t)row * n_head + h) * (HD + 2);
    float M, L;
    const float o = merge_states(
        n_rank, [&](int g) { return first[g * rank_stride + HD]; },
        [&](int g) { return first[g * rank_stride + HD + 1]; }, [&](int g) { return first[g * rank_stride + d]; }, M,
        L);
    out[(size_t)row * C + h * HD + d] = from_f<OutT>(o / L);
}

/* After a call: every head of its sequences holds rows_per_seq more entries
 * (a full ring instead moves on to its next slot) and every sequence is that
 * much further on. */
template <typename W> __global__ void advance_kernel(rows_ctx<W> c, int n_seq)
{
    wait_for_previous_kernel();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * c.n_lh) return;
    const int b = c.seq0 + i / c.n_lh;
    const size_t bh = (size_t)b * c.n_lh + i % c.n_lh;
    ring_advance(c.ring[bh], c.kv_len[bh], c.rows_per_seq);
    if (i % c.n_lh == 0) c.seq_pos[b] += c.rows_per_seq;
}

/* Slots 0..len-1 of heads head0.. of one layer of sequence b, as float32:
 * keys to k and values to v, both [heads][len][head_dim] (what a press on the
 * host reads). Grid (len / 8 rounded up, heads), 8 warps. */
template <typename W>
__global__ void read_heads_kernel(rows_ctx<W> c, int b, int layer, int head0, int len, float *k, float *v)
{
    const int lh = layer * c.n_head + head0 + blockIdx.y;
    const int slot = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (slot >= len) return;
    const W *key = kv_entry(c, b, lh, slot, 0), *value = kv_entry(c, b, lh, slot, 1);
    const size_t row = ((size_t)blockIdx.y * len + slot) * c.head_dim;
    for (int d = lane; d < c.head_dim; d += 32) {
        k[row + d] = to_f<W>(key[d]);
        v[row + d] = to_f<W>(value[d]);
    }
}

/* Keep entries keep[h][0..n_keep[h]-1] (ascending slots) of every head of one
 * layer of sequence b, moved to slots 0..n_keep[h]-1 in place; an entry
 * already in its slot is not touched, so a head that keeps a prefix costs
 * nothing but its list. Grid n_head, one block per head; each round reads
 * PK_CUDA_BLOCK kept entries, waits, then writes them. Safe in place: a kept
 * slot is never below its destination, so a round writes only slots that this
 * round has already read or that no later round reads. keep is
 * [n_head][stride]. */
template <typename W>
__global__ void compact_layer_kernel(rows_ctx<W> c, int b, int layer, const int32_t *keep, const int32_t *n_keep,
                                     int stride)
{
    W *staged = reinterpret_cast<W *>(dynamic_shared()); /* [PK_CUDA_BLOCK][2][head_dim] */
    const int h = blockIdx.x, lh = layer * c.n_head + h, hd = c.head_dim, n = n_keep[h];
    const int32_t *mine = keep + (size_t)h * stride;
    for (int first = 0; first < n; first += PK_CUDA_BLOCK) {
        const int count = min(PK_CUDA_BLOCK, n - first);
        for (int i = threadIdx.x; i < count * 2 * hd; i += blockDim.x) {
            const int e = i / (2 * hd), values = i / hd % 2, d = i % hd;
            if (mine[first + e] != first + e) staged[i] = kv_entry(c, b, lh, mine[first + e], values)[d];
        }
        __syncthreads();
        for (int i = threadIdx.x; i < count * 2 * hd; i += blockDim.x) {
            const int e = i / (2 * hd), values = i / hd % 2, d = i % hd;
            if (mine[first + e] != first + e) kv_entry(c, b, lh, first + e, values)[d] = staged[i];
        }
        __syncthreads();
    }
}

/* The greedy choice of each row of logits [rows][V]: the index of the
 * largest value, the lowest such index on ties (as the CPU's argmax), to
 * out[row]; with by_position, also to by_position[row * stride +
 * seq_pos[row]], the position the choice will take in sequence `row`. Grid
 * rows, blockDim a multiple of 32 up to 1024. */
__global__ void argmax_kernel(const float *logits, int V, int32_t *out, const int32_t *seq_pos, int32_t *by_position,
                              int stride)
{
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float *x = logits + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    /* A thread visits i, i + blockDim, i + 2 blockDim, ... in ascending order,
     * with four loads in flight before it compares any of them: the scan is a
     * chain of L2 round trips, a quarter as long as with one load at a time. */
    const int step = blockDim.x;
    for (int i0 = threadIdx.x; i0 < V; i0 += 4 * step) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = i0 + u * step < V ? x[i0 + u * step] : 0.f;
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (i0 + u * step < V && (v[u] > bv || bi == 0x7fffffff)) {
                bv = v[u];
                bi = i0 + u * step;
            }
    }
    /* Lanes hold ascending candidate indices per thread; merge keeping the lower index on ties. */
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, bv, o);
        const int j = __shfl_xor_sync(0xffffffffu, bi, o);
        if (v > bv || (v == bv && j < bi)) {
            bv = v;
            bi = j;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; w++)
            if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
                bv = best_v[w];
                bi = best_i[w];
            }
        out[blockIdx.x] = bi;
        if (by_position) by_position[(size_t)blockIdx.x * stride + seq_pos[blockIdx.x]] = bi;
    }
}

} // namespace pkcuda

#endif
