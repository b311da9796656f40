/* The CUDA engine: sessions, the forward pass on the device, the decode step
 * captured in CUDA graphs.
 *
 * Two paths run the matrix products. Up to gemv_rows rows (decode, short
 * inputs) use the fused matrix-vector kernels, with the layer norm in their
 * prologue and bias, GELU, the residual add or the KV append in their
 * epilogue: five launches per layer. More rows use cuBLAS (float32
 * accumulation) with separate layer-norm and epilogue kernels.
 *
 * The decode path's kernels are launched to overlap (programmatic dependent
 * launch): each may start while the one before it finishes, loading its
 * weights, and waits for it before reading activations. Decode attention is
 * split over several blocks per head, so that the few heads of a batch-1
 * step still fill the GPU. */
#include "backend/cuda/engine.h"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/measure_kernels.cuh"
#include "backend/cuda/weights.cuh"

extern "C" {
#include "kv/block_pool.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

using namespace pkcuda;

enum { MAX_GEMV_ROWS = 8, GEMV_WARPS = 8, CUBLAS_WORKSPACE = 32 << 20, MAX_SPLIT = 64 };
/* Warps of a decode-attention block: 16 for one sequence, 8 for several
 * (measured on an H100 against 4, 8 and 16 for each; docs/cuda.md). */
enum { DECODE_WARPS_ONE = 16, DECODE_WARPS_MANY = 8 };
/* Greedy steps captured one after another in one graph: a replay boundary
 * costs a few microseconds that a kernel boundary inside a graph does not. */
enum { GREEDY_RUN = 16 };

/* Activation buffers for up to `rows` rows. att and fc are sized for float32
 * and hold W where they feed cuBLAS. */
typedef struct {
    int rows;
    float *x, *q, *prod;     /* residual [rows][C], queries [rows][C], cuBLAS output [rows][max(3C, F)] */
    void *xn, *att, *fc;     /* [rows][C], [rows][C], [rows][F] */
    float *logits;           /* [rows][V] */
} activations;

struct pk_cuda_session {
    const pikv_model *model;
    pikv_config cfg;
    pk_cuda_params params;
    pk_cuda_weights w;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_workspace;

    pk_block_pool pool;
    void *d_pool;
    int32_t *d_table, *d_kv_len, *d_pos, *d_tokens;
    ring_state *d_ring;       /* [max_seq][n_layer * n_head] */
    int32_t *h_pos, *h_len;   /* host copies: [max_seq], [max_seq][n_layer * n_head] */
    ring_state *h_ring;       /* host copy of d_ring */
    int32_t *h_need;          /* scratch [n_layer * n_head]: entries each head needs for a step */
    int n_lh;
    /* For presses: a layer's entries as float32 [2][n_head][n_positions][head_dim],
     * and kept slots [n_head][n_positions] with their counts [n_head]. */
    float *d_layer;
    int32_t *d_keep, *d_n_keep;
    /* For the press measures: the queries of the last prompt that kept them,
     * [n_layer][query_rows][C] (room for query_cap rows), and scratch: a row's
     * log-sum-exp [n_positions], two per-entry results [2][n_positions] and
     * the query statistics [head_dim + head_dim^2]. */
    float *d_queries;
    int query_rows, query_cap;
    float *d_lse;
    double *d_measure, *d_stats;
    /* moe_router's k-means on the device: scratch of d_kmeans_bytes, grown
     * to the largest request. */
    void *d_kmeans;
    size_t d_kmeans_bytes;

    int gemv_rows;            /* most rows the matrix-vector path takes */
    int n_sm;                 /* the device's multiprocessors */
    size_t smem_optin;        /* the most shared memory a block may ask for */
    float *d_part;            /* split decode attention: [max_seq][n_head][split_cap][head_dim + 2] */
    int *d_done;              /* its completion counts [max_seq][n_head], zero between steps */
    int split_cap;
    activations small, large; /* small: decode and short inputs (captured in graphs); large: prompts */
    int32_t *h_tokens;        /* pinned [max_seq] */
    /* Greedy choices by position: device [max_seq][n_positions + 1] (the
     * token chosen to sit at each position), and pinned staging as large. */
    int32_t *d_chosen, *h_chosen;
    float *h_logits;          /* pinned [small.rows][V] */
    cudaGraphExec_t *graphs;  /* [max_seq + 1]: the decode step of n sequences */
    cudaGraphExec_t *greedy_graphs; /* [max_seq + 1]: the same with each greedy choice fed to the next step */
    cudaGraphExec_t *greedy_runs;   /* [max_seq + 1]: GREEDY_RUN such steps in one graph */
    int launches;             /* kernel launches enqueued by the last call */
    int kernels_per_decode;
    /* One of several GPUs (engine/cuda/group_cuda.h): decode attention's states
     * of this GPU's slices [max_seq][n_head][head_dim + 2], those of all n_rank
     * GPUs gathered by `exchange`, and where detached heads' new entries go. */
    int n_rank;
    pk_cuda_exchange_fn exchange;
    void *exchange_ctx;
    float *d_states, *d_gathered;
    void *d_discard;          /* [max_seq][2C] of the storage type */
    /* Query-time routing of sequence route_seq while `route` is set (pk_cuda_route_begin):
     * each head's routed length and slot masks [n_lh][n_positions], a call's
     * row masks [n_positions][n_head] and their pinned staging with the
     * queries [n_positions][C]. route_rows is the rows of the call being
     * routed while the callback runs (they count as held), route_stale that
     * the sequence was cut or compressed since its routing began. */
    int route_seq, route_rows, route_stale;
    pk_cuda_route_fn route;
    void *route_ctx;
    int32_t *d_route_len;
    uint64_t *d_route_slot, *d_route_row, *h_route_row;
    float *h_route_q;
};

/* Record a failed CUDA call as the library's error. */
static int cuda_fail(cudaError_t e, const char *what)
{
    return pk_fail("CUDA: %s: %s", what, cudaGetErrorString(e));
}

#define CU(call, what)                                                                                               \
    do {                                                                                                             \
        cudaError_t e_ = (call);                                                                                     \
        if (e_ != cudaSuccess) return cuda_fail(e_, what);                                                           \
    } while (0)

#define BLAS(call, what)                                                                                             \
    do {                                                                                                             \
        cublasStatus_t st_ = (call);                                                                                 \
        if (st_ != CUBLAS_STATUS_SUCCESS) return pk_fail("cuBLAS: %s: status %d", what, (int)st_);                  \
    } while (0)

extern "C" int pk_cuda_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) return pk_fail("no usable CUDA device: %s", cudaGetErrorString(e)), 0;
    if (n == 0) return pk_fail("no CUDA device found"), 0;
    return 1;
}

extern "C" int pk_cuda_describe(char *buf, size_t len)
{
    cudaDeviceProp p;
    int drv = 0, rt = 0;
    CU(cudaGetDeviceProperties(&p, 0), "reading the device's properties");
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    snprintf(buf, len, "%s (%d SMs, %.0f GiB), CUDA driver API %d.%d, runtime %d.%d", p.name, p.multiProcessorCount,
             (double)p.totalGlobalMem / (1 << 30), drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    return 0;
}

static void free_activations(activations *a)
{
    cudaFree(a->x);
    cudaFree(a->q);
    cudaFree(a->prod);
    cudaFree(a->xn);
    cudaFree(a->att);
    cudaFree(a->fc);
    cudaFree(a->logits);
    memset(a, 0, sizeof *a);
}

/* Allocate buffers for `rows` rows (logits for logit_rows of them). */
static int alloc_activations(activations *a, const pikv_config *c, int rows, int logit_rows)
{
    const size_t n = (size_t)rows, C = (size_t)c->n_embd, F = (size_t)c->n_inner;
    const size_t widest = 3 * C > F ? 3 * C : F;
    memset(a, 0, sizeof *a);
    cudaError_t e = cudaSuccess;
    if (e == cudaSuccess) e = cudaMalloc((void **)&a->x, n * C * 4);
    if (e == cudaSuccess) e = cudaMalloc((void **)&a->q, n * C * 4);
    if (e == cudaSuccess) e = cudaMalloc((void **)&a->prod, n * widest * 4);
    if (e == cudaSuccess) e = cudaMalloc(&a->xn, n * C * 4);
    if (e == cudaSuccess) e = cudaMalloc(&a->att, n * C * 4);
    if (e == cudaSuccess) e = cudaMalloc(&a->fc, n * F * 4);
    if (e == cudaSuccess) e = cudaMalloc((void **)&a->logits, (size_t)logit_rows * (size_t)c->vocab_size * 4);
    if (e != cudaSuccess) {
        free_activations(a);
        return cuda_fail(e, "allocating activations");
    }
    a->rows = rows;
    return 0;
}

/* Grow the prompt buffers to `rows` rows (logits for all of them). */
static int ensure_large(pk_cuda_session *s, int rows)
{
    if (rows <= s->large.rows) return 0;
    free_activations(&s->large);
    return alloc_activations(&s->large, &s->cfg, rows, rows);
}

/* The cuBLAS data type of W. */
template <typename W> static cudaDataType_t blas_type();
template <> cudaDataType_t blas_type<float>() { return CUDA_R_32F; }
template <> cudaDataType_t blas_type<__half>() { return CUDA_R_16F; }
template <> cudaDataType_t blas_type<__nv_bfloat16>() { return CUDA_R_16BF; }

/* The call's view of the paged cache for the kernels. */
template <typename W> static rows_ctx<W> make_ctx(pk_cuda_session *s, int seq0, int rows_per_seq)
{
    rows_ctx<W> c;
    c.seq0 = seq0;
    c.rows_per_seq = rows_per_seq;
    c.seq_pos = s->d_pos;
    c.kv_len = s->d_kv_len;
    c.ring = s->d_ring;
    c.table = s->d_table;
    c.pool = (W *)s->d_pool;
    c.discard = (W *)s->d_discard;
    c.max_blocks = s->pool.max_blocks;
    c.n_lh = s->n_lh;
    c.n_head = s->cfg.n_head;
    c.head_dim = s->cfg.head_dim;
    c.C = s->cfg.n_embd;
    c.route_seq = -1; /* set by a routed forward call only: never in a captured step */
    c.route_stride = 0;
    c.route_len = nullptr;
    c.route_slot = c.route_row = nullptr;
    return c;
}

/* An epilogue writing to y [R][out] (EPI_QKV: queries to y, keys and values to the cache of `layer`). */
template <typename W, typename OutT, int EPI>
static epilogue<W, OutT, EPI> make_epi(void *y, int out, int layer, const rows_ctx<W> &c)
{
    epilogue<W, OutT, EPI> e;
    e.y = (OutT *)y;
    e.out = out;
    e.layer = layer;
    e.kv = c;
    return e;
}

/* Launch a kernel that may overlap the one before it in the stream
 * (programmatic dependent launch): the kernel itself waits for its
 * predecessor before reading anything that predecessor writes. */
template <typename... P, typename... A>
static void launch_overlapped(pk_cuda_session *s, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args)
{
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s->stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    /* A failed launch is left in cudaGetLastError, which the forward pass checks. */
    (void)cudaLaunchKernelEx(&cfg, kernel, (P)args...);
    s->launches++;
}

/* The row template (1, 2, 4 or 8) that holds n_rows rows. */
static int gemv_template_rows(int n_rows) { return n_rows <= 1 ? 1 : n_rows <= 2 ? 2 : n_rows <= 4 ? 4 : 8; }

/* Warps that share each output of a matrix-vector product of n_rows rows of
 * `in` inputs, weights of w_size bytes: the fewest, a power of two up to the
 * GEMV_WARPS of a block, whose parts of a row fit the loads a lane holds
 * (gemv_loads), so that a warp issues all of its loads before it adds
 * anything up. For gpt2-medium's MLP down-projection (in 4,096, bf16) at one
 * row this is 2: 8 loads a lane, 256 blocks, where one warp an output had
 * walked each 8 KB row a load or two at a time.
 *
 * Never more: every weight of a part is then already requested at once, and
 * each block copies all rows of x to shared memory, so a split of s, which
 * leaves GEMV_WARPS / s outputs a block, multiplies those copies. It also
 * stops where the copy (4 * n_rows bytes an input) would outweigh the
 * block's weights ((GEMV_WARPS / s) * w_size bytes an input): with 4 and 8
 * rows of 16-bit weights a warp instead walks its row gemv_loads at a time. */
static int gemv_split(int in, int w_size, int n_rows)
{
    const int vectors = in / (16 / w_size), loads = gemv_loads(gemv_template_rows(n_rows));
    int split = 1;
    while (split < GEMV_WARPS && (vectors + 32 * split - 1) / (32 * split) > loads &&
           4 * n_rows * 2 * split <= GEMV_WARPS * w_size)
        split *= 2;
    return split;
}

/* Shared memory of a matrix-vector launch: the rows of x, and the layer
 * norm's weights; with `parts`, one row's split attention states too. */
static size_t gemv_smem(int n_rows, int in, bool ln, split_input parts = {0, 0})
{
    const size_t states = parts.n_split ? (size_t)split_input_floats(parts, in) : 0;
    return ((size_t)(n_rows + (ln ? 2 : 0)) * in + states) * sizeof(float);
}

/* The most dynamic shared memory a matrix-vector launch may take: the
 * kernels' own static shared memory (at most 1.5 KB) comes out of the same
 * opt-in limit. */
static size_t gemv_smem_cap(const pk_cuda_session *s) { return s->smem_optin - 2048; }

/* Launch the matrix-vector kernel with the smallest row template that holds
 * n_rows; with `parts`, x is one row's split attention states. */
template <typename W, bool LN, typename OutT, int EPI>
static void gemv(pk_cuda_session *s, const void *Wt, const float *bias, const float *x, int n_rows, int in,
                 const float *ln_w, const float *ln_b, epilogue<W, OutT, EPI> epi, split_input parts = {0, 0})
{
    const int R = gemv_template_rows(n_rows);
    const int split = gemv_split(in, (int)sizeof(W), n_rows), per_block = GEMV_WARPS / split;
    int blocks = (epi.out + per_block - 1) / per_block;
    if (blocks > s->n_sm * 8) blocks = s->n_sm * 8; /* the kernel strides over the rest */
    const size_t smem = gemv_smem(n_rows, in, LN, parts);
    const float eps = s->cfg.layer_norm_epsilon;
    const W *w = (const W *)Wt;
#define GEMV_CASE(R)                                                                                                 \
    launch_overlapped(s, gemv_kernel<W, R, LN, OutT, EPI>, blocks, GEMV_WARPS * 32, smem, w, bias, x, n_rows, in,     \
                      split, ln_w, ln_b, eps, parts, epi)
    switch (R) {
    case 1: GEMV_CASE(1); break;
    case 2: GEMV_CASE(2); break;
    case 4: GEMV_CASE(4); break;
    default: GEMV_CASE(8); break;
    }
#undef GEMV_CASE
}

/* Let every matrix-vector kernel use the shared memory its widest launch needs. */
template <typename W, bool LN, typename OutT, int EPI> static int allow_smem(size_t bytes)
{
    CU(cudaFuncSetAttribute(gemv_kernel<W, 1, LN, OutT, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
       "raising shared memory");
    CU(cudaFuncSetAttribute(gemv_kernel<W, 2, LN, OutT, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
       "raising shared memory");
    CU(cudaFuncSetAttribute(gemv_kernel<W, 4, LN, OutT, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
       "raising shared memory");
    CU(cudaFuncSetAttribute(gemv_kernel<W, 8, LN, OutT, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
       "raising shared memory");
    return 0;
}

/* The four matrix-vector variants the forward pass launches, for up to `rows`
 * rows: the layer-normed ones read n_embd inputs, the others up to
 * max(n_embd, n_inner), or `parts_bytes` for the output projection that
 * merges one sequence's split attention states. */
template <typename W> static int prepare_kernels(const pikv_config *c, int rows, size_t parts_bytes)
{
    const int widest = c->n_embd > c->n_inner ? c->n_embd : c->n_inner;
    const size_t ln = gemv_smem(rows, c->n_embd, true);
    size_t plain = gemv_smem(rows, widest, false);
    if (parts_bytes > plain) plain = parts_bytes;
    if (allow_smem<W, true, float, EPI_QKV>(ln) || allow_smem<W, false, float, EPI_RESIDUAL>(plain) ||
        allow_smem<W, true, float, EPI_GELU>(ln) || allow_smem<W, true, float, EPI_STORE>(ln))
        return -1;
    return 0;
}

/* y[R][out] = x[R][in] · Wt^T with float32 accumulation (cuBLAS is column-major:
 * it computes y^T = Wt x^T with Wt read as the transpose of an [in][out] matrix). */
template <typename W>
static int gemm(pk_cuda_session *s, const void *Wt, const void *x, float *y, int R, int in, int out)
{
    const float one = 1.f, zero = 0.f;
    BLAS(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, R, in, &one, Wt, blas_type<W>(), in, x, blas_type<W>(),
                      in, &zero, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
         "matrix product");
    s->launches++;
    return 0;
}

/* The epilogue over a cuBLAS product of R rows. */
template <typename W, typename OutT, int EPI>
static void epilogue_launch(pk_cuda_session *s, const float *prod, const float *bias, int R,
                            epilogue<W, OutT, EPI> epi)
{
    const size_t n = (size_t)R * epi.out;
    int blocks = (int)((n + 255) / 256);
    if (blocks > 132 * 16) blocks = 132 * 16;
    epilogue_kernel<W, OutT, EPI><<<blocks, 256, 0, s->stream>>>(prod, bias, R, epi);
    s->launches++;
}

/* Layer norm of R rows into the input type of the following cuBLAS product. */
template <typename W>
static void layernorm(pk_cuda_session *s, void *out, const float *x, const float *w, const float *b, int R)
{
    layernorm_kernel<W><<<R, 256, 0, s->stream>>>((W *)out, x, w, b, s->cfg.n_embd, s->cfg.layer_norm_epsilon);
    s->launches++;
}

/* x += prod + bias over R rows, then the layer norm (w, b) of x into out. */
template <typename W>
static void residual_layernorm(pk_cuda_session *s, void *out, float *x, const float *prod, const float *add_bias,
                               const float *w, const float *b, int R)
{
    residual_layernorm_kernel<W><<<R, 256, 0, s->stream>>>((W *)out, x, prod, add_bias, w, b, s->cfg.n_embd,
                                                           s->cfg.layer_norm_epsilon);
    s->launches++;
}

/* KV blocks of the longest head list. */
static int max_kv_blocks(const pk_cuda_session *s) { return (s->cfg.n_positions + PK_CUDA_BLOCK - 1) / PK_CUDA_BLOCK; }

static int decode_warps(int n_seq) { return n_seq == 1 ? DECODE_WARPS_ONE : DECODE_WARPS_MANY; }

/* Blocks per head of the split decode attention for n_seq sequences: about
 * two per multiprocessor over all heads, and no more than the longest
 * context gives its warps KV blocks to read. With several sequences, also
 * enough that a split reads at most 4 KV blocks per warp of the longest
 * possible head: the splits then take fixed shares (attention()), so that the
 * long heads a press leaves beside short ones are not the step's tail. */
static int decode_splits(const pk_cuda_session *s, int n_seq)
{
    int want = (2 * s->n_sm + s->cfg.n_head * n_seq - 1) / (s->cfg.n_head * n_seq);
    const int nw = decode_warps(n_seq), kv_blocks = max_kv_blocks(s), fixed = (kv_blocks + 4 * nw - 1) / (4 * nw);
    if (n_seq > 1 && want < fixed) want = fixed;
    int n = want < (kv_blocks + nw - 1) / nw ? want : (kv_blocks + nw - 1) / nw;
    if (n > MAX_SPLIT) n = MAX_SPLIT;
    return n < 1 ? 1 : n;
}

/* How one sequence's decode attention hands its heads to the output
 * projection: as split states that the projection merges while it reads them
 * (which takes the merge, a fence and a count out of the attention's tail),
 * or, n_split 0, as merged rows: on one of several GPUs, whose states are
 * exchanged first, or where the states would not fit the projection's shared
 * memory beside its row. The states are copied 16 bytes at a time, so their
 * count must be a multiple of 4 floats. */
static split_input decode_parts(const pk_cuda_session *s)
{
    const split_input p = {decode_splits(s, 1), s->cfg.head_dim};
    if (s->n_rank > 0 || split_input_floats(p, s->cfg.n_embd) % 4 ||
        gemv_smem(1, s->cfg.n_embd, false, p) > gemv_smem_cap(s))
        return {0, 0};
    return p;
}

/* What a split decode-attention launch takes besides its warp count. */
template <typename W, typename OutT> struct decode_args {
    const float *q;
    OutT *out;
    int layer;
    float scale;
    rows_ctx<W> c;
    int n_split, n_seq, per_split;
    float *states;
    int *done;
};

template <typename W, typename OutT, int HD, int NW, bool ROUTED = false>
static void launch_decode(pk_cuda_session *s, const decode_args<W, OutT> &a)
{
    launch_overlapped(s, attention_decode_kernel<W, OutT, HD, NW, ROUTED>, dim3(a.n_split, s->cfg.n_head, a.n_seq),
                      dim3(NW * 32), 0, a.q, a.out, a.layer, a.scale, a.c, s->d_part, a.done, a.per_split,
                      a.states);
}

/* Attention of the call's rows, OutT being float on the matrix-vector path and
 * W on the cuBLAS path. Decode (one row per sequence) splits each head's
 * context over several blocks, whose states stay in d_part unmerged when
 * leave_parts; prompts have a block per row and head, of 4 warps each. */
template <typename W, typename OutT>
static int attention(pk_cuda_session *s, const float *q, void *out, int layer, int n_seq, const rows_ctx<W> &c,
                     bool leave_parts = false)
{
    const float scale = pk_attention_scale(&s->cfg, layer);
    const int n_split = decode_splits(s, n_seq);
    /* One sequence: every head divides its own context among all the splits.
     * Several: fixed shares of the longest possible context. */
    const int per_split = n_seq > 1 ? (max_kv_blocks(s) + n_split - 1) / n_split : 0;
    OutT *o = (OutT *)out;
    /* On one of several GPUs a decode step's heads end in states that all GPUs exchange and merge. */
    const int sharded = s->n_rank > 0 && c.rows_per_seq == 1;
    const size_t n_states = (size_t)n_seq * s->cfg.n_head * (s->cfg.head_dim + 2);
    /* A routed call is one sequence's (enqueue_forward); its kernels read the routing. */
    const bool routed = c.route_seq >= 0;
#define ATTN_CASE(HD)                                                                                                \
    if (c.rows_per_seq == 1) {                                                                                       \
        const decode_args<W, OutT> a{q, o, layer, scale, c, n_split, n_seq, per_split,                              \
                                     sharded ? s->d_states : nullptr, leave_parts ? nullptr : s->d_done};             \
        if (routed) launch_decode<W, OutT, HD, DECODE_WARPS_ONE, true>(s, a);                                       \
        else if (decode_warps(n_seq) == DECODE_WARPS_ONE) launch_decode<W, OutT, HD, DECODE_WARPS_ONE>(s, a);        \
        else launch_decode<W, OutT, HD, DECODE_WARPS_MANY>(s, a);                                                    \
        if (sharded) {                                                                                               \
            CU(cudaGetLastError(), "launching decode attention");                                                    \
            if (s->exchange(s->exchange_ctx, s->d_states, s->d_gathered, n_states, s->stream)) return -1;            \
            merge_ranks_kernel<OutT, HD><<<dim3(s->cfg.n_head, n_seq), HD, 0, s->stream>>>(s->d_gathered, s->n_rank, \
                                                                                          o, s->cfg.n_embd);           \
            s->launches++;                                                                                           \
        }                                                                                                            \
    } else {                                                                                                         \
        const dim3 grid(c.rows_per_seq, s->cfg.n_head, n_seq);                                                       \
        if (routed) attention_kernel<W, OutT, HD, 4, true><<<grid, 4 * 32, 0, s->stream>>>(q, o, layer, scale, c);    \
        else attention_kernel<W, OutT, HD, 4><<<grid, 4 * 32, 0, s->stream>>>(q, o, layer, scale, c);                 \
        s->launches++;                                                                                               \
    }
    switch (s->cfg.head_dim) {
    case 32: ATTN_CASE(32); break;
    case 64: ATTN_CASE(64); break;
    case 128: ATTN_CASE(128); break;
    default: return pk_fail("CUDA attention: head_dim %d is not supported (32, 64 or 128)", s->cfg.head_dim);
    }
#undef ATTN_CASE
    return 0;
}

/* When queries (device [n_layer][R][C]) is not NULL, copy layer l's R query
 * rows q into it, in stream order, before the next layer overwrites them. */
static int copy_queries(pk_cuda_session *s, float *queries, const float *q, int l, int R)
{
    if (!queries) return 0;
    const size_t n = (size_t)R * s->cfg.n_embd;
    CU(cudaMemcpyAsync(queries + (size_t)l * n, q, n * 4, cudaMemcpyDeviceToDevice, s->stream), "keeping queries");
    return 0;
}

/* Query-time routing of layer l's R query rows q: to the host, through the
 * session's router, and the rows' masks back before the attention reads
 * them. The one synchronisation inside a forward pass. */
static int route_layer(pk_cuda_session *s, const float *q, int l, int R)
{
    CU(cudaMemcpyAsync(s->h_route_q, q, (size_t)R * s->cfg.n_embd * 4, cudaMemcpyDeviceToHost, s->stream),
       "copying queries to route");
    CU(cudaStreamSynchronize(s->stream), "routing queries");
    s->route_rows = R;
    const int rc = s->route(s->route_ctx, l, s->h_route_q, R, s->h_route_row);
    s->route_rows = 0;
    if (rc) return -1;
    CU(cudaMemcpyAsync(s->d_route_row, s->h_route_row, (size_t)R * s->cfg.n_head * 8, cudaMemcpyHostToDevice,
                       s->stream),
       "sending the routes");
    return 0;
}

/* Enqueue the whole forward pass of n_seq sequences (seq0...) with
 * rows_per_seq new tokens each, whose ids are in d_tokens. Logits go to
 * a->logits: of every row when all_logits, else of the last row of each
 * sequence. Nothing here synchronises, so the decode step can be captured,
 * unless the call is `routed` (one sequence, the routed one): then each
 * layer's queries are routed on the host between its QKV product and its
 * attention. */
template <typename W>
static int enqueue_forward(pk_cuda_session *s, activations *a, int seq0, int n_seq, int rows_per_seq, int want_logits,
                           int all_logits, float *queries, int routed)
{
    const pikv_config *cf = &s->cfg;
    const int C = cf->n_embd, F = cf->n_inner, V = cf->vocab_size, R = n_seq * rows_per_seq;
    const int small = R <= s->gemv_rows;
    /* One sequence's decode step: its output projection merges the attention's split states. */
    const split_input parts = small && n_seq == 1 && rows_per_seq == 1 ? decode_parts(s) : split_input{0, 0};
    const float *att_in =
        parts.n_split ? s->d_part + (size_t)seq0 * split_input_floats(parts, C) : (const float *)a->att;
    rows_ctx<W> c = make_ctx<W>(s, seq0, rows_per_seq);
    if (routed) {
        c.route_seq = seq0;
        c.route_stride = cf->n_positions;
        c.route_len = s->d_route_len;
        c.route_slot = s->d_route_slot;
        c.route_row = s->d_route_row;
    }
    s->launches = 0;
    embed_kernel<W><<<R, 128, 0, s->stream>>>(a->x, (const W *)s->w.wte, s->w.wpe, s->d_tokens, c);
    s->launches++;
    for (int l = 0; l < cf->n_layer; l++) {
        const pk_cuda_layer *L = &s->w.layers[l];
        if (small) {
            gemv<W, true>(s, L->attn_w, L->attn_b, a->x, R, C, L->ln_1_w, L->ln_1_b,
                          make_epi<W, float, EPI_QKV>(a->q, 3 * C, l, c));
            if ((routed && route_layer(s, a->q, l, R)) ||
                attention<W, float>(s, a->q, a->att, l, n_seq, c, parts.n_split > 0) ||
                copy_queries(s, queries, a->q, l, R))
                return -1;
            gemv<W, false>(s, L->attn_proj_w, L->attn_proj_b, att_in, R, C, NULL, NULL,
                           make_epi<W, float, EPI_RESIDUAL>(a->x, C, l, c), parts);
            gemv<W, true>(s, L->fc_w, L->fc_b, a->x, R, C, L->ln_2_w, L->ln_2_b,
                          make_epi<W, float, EPI_GELU>(a->fc, F, l, c));
            gemv<W, false>(s, L->fc_proj_w, L->fc_proj_b, (const float *)a->fc, R, F, NULL, NULL,
                           make_epi<W, float, EPI_RESIDUAL>(a->x, C, l, c));
            continue;
        }
        /* Each residual epilogue also makes the next layer norm (ln_2, the next
         * layer's ln_1, or ln_f), so only the first layer norm is a launch of its own. */
        if (l == 0) layernorm<W>(s, a->xn, a->x, L->ln_1_w, L->ln_1_b, R);
        if (gemm<W>(s, L->attn_w, a->xn, a->prod, R, C, 3 * C)) return -1;
        epilogue_launch(s, a->prod, L->attn_b, R, make_epi<W, float, EPI_QKV>(a->q, 3 * C, l, c));
        if ((routed && route_layer(s, a->q, l, R)) || attention<W, W>(s, a->q, a->att, l, n_seq, c) ||
            copy_queries(s, queries, a->q, l, R))
            return -1;
        if (gemm<W>(s, L->attn_proj_w, a->att, a->prod, R, C, C)) return -1;
        residual_layernorm<W>(s, a->xn, a->x, a->prod, L->attn_proj_b, L->ln_2_w, L->ln_2_b, R);
        if (gemm<W>(s, L->fc_w, a->xn, a->prod, R, C, F)) return -1;
        epilogue_launch(s, a->prod, L->fc_b, R, make_epi<W, W, EPI_GELU>(a->fc, F, l, c));
        if (gemm<W>(s, L->fc_proj_w, a->fc, a->prod, R, F, C)) return -1;
        const int last = l + 1 == cf->n_layer;
        const pk_cuda_layer *next = last ? NULL : &s->w.layers[l + 1];
        residual_layernorm<W>(s, a->xn, a->x, a->prod, L->fc_proj_b, last ? s->w.ln_f_w : next->ln_1_w,
                              last ? s->w.ln_f_b : next->ln_1_b, R);
    }
    if (want_logits) {
        /* The rows wanted: all, one per sequence (decode), or a prompt's last. */
        const int rows = all_logits ? R : n_seq;
        const float *x = all_logits || rows_per_seq == 1 ? a->x : a->x + (size_t)(rows_per_seq - 1) * C;
        if (!all_logits && rows_per_seq > 1 && n_seq > 1)
            return pk_fail("CUDA forward: last-row logits of several multi-token sequences are not supported");
        if (rows <= s->gemv_rows) {
            gemv<W, true>(s, s->w.lm_head, NULL, x, rows, C, s->w.ln_f_w, s->w.ln_f_b,
                          make_epi<W, float, EPI_STORE>(a->logits, V, 0, c));
        } else {
            /* More rows than the matrix-vector path takes means the cuBLAS path ran,
             * whose last epilogue left ln_f of every row in xn. */
            const W *xn = (const W *)a->xn + (x - a->x);
            if (gemm<W>(s, s->w.lm_head, xn, a->logits, rows, C, V)) return -1;
        }
    }
    const int n = n_seq * s->n_lh;
    launch_overlapped(s, advance_kernel<W>, dim3((n + 255) / 256), dim3(256), 0, c, n_seq);
    CU(cudaGetLastError(), "launching the forward pass");
    return 0;
}

/* Call f with a value of the session's storage type W (float, __half or
 * __nv_bfloat16), for the code templated on it. */
template <typename F> static void with_storage_type(const pk_cuda_session *s, F f)
{
    switch (s->params.dtype) {
    case PK_CUDA_BF16: f(__nv_bfloat16{}); break;
    case PK_CUDA_F16: f(__half{}); break;
    default: f(float{}); break;
    }
}

/* enqueue_forward for the session's storage type; queries (device [n_layer][R][C]) may be NULL. */
static int enqueue(pk_cuda_session *s, activations *a, int seq0, int n_seq, int rows_per_seq, int want_logits,
                   int all_logits, float *queries = nullptr, int routed = 0)
{
    int rc = -1;
    with_storage_type(s, [&](auto w) {
        rc = enqueue_forward<decltype(w)>(s, a, seq0, n_seq, rows_per_seq, want_logits, all_logits, queries, routed);
    });
    return rc;
}

extern "C" void pk_cuda_session_free(pk_cuda_session *s)
{
    if (!s) return;
    for (int i = 0; i <= s->params.max_seq; i++) {
        if (s->graphs && s->graphs[i]) cudaGraphExecDestroy(s->graphs[i]);
        if (s->greedy_graphs && s->greedy_graphs[i]) cudaGraphExecDestroy(s->greedy_graphs[i]);
        if (s->greedy_runs && s->greedy_runs[i]) cudaGraphExecDestroy(s->greedy_runs[i]);
    }
    pk_free(s->graphs);
    pk_free(s->greedy_graphs);
    pk_free(s->greedy_runs);
    free_activations(&s->small);
    free_activations(&s->large);
    cudaFreeHost(s->h_tokens);
    cudaFreeHost(s->h_chosen);
    cudaFree(s->d_chosen);
    cudaFreeHost(s->h_logits);
    cudaFree(s->d_pool);
    cudaFree(s->d_table);
    cudaFree(s->d_kv_len);
    cudaFree(s->d_pos);
    cudaFree(s->d_tokens);
    cudaFree(s->d_part);
    cudaFree(s->d_done);
    cudaFree(s->d_discard);
    cudaFree(s->d_states);
    cudaFree(s->d_gathered);
    cudaFree(s->d_ring);
    cudaFree(s->d_layer);
    cudaFree(s->d_keep);
    cudaFree(s->d_n_keep);
    cudaFree(s->d_queries);
    cudaFree(s->d_lse);
    cudaFree(s->d_measure);
    cudaFree(s->d_stats);
    cudaFree(s->d_kmeans);
    cudaFree(s->d_route_len);
    cudaFree(s->d_route_slot);
    cudaFree(s->d_route_row);
    cudaFreeHost(s->h_route_row);
    cudaFreeHost(s->h_route_q);
    pk_free(s->h_pos);
    pk_free(s->h_len);
    pk_free(s->h_ring);
    pk_free(s->h_need);
    pk_block_pool_free(&s->pool);
    if (s->blas) cublasDestroy(s->blas);
    cudaFree(s->blas_workspace);
    if (s->stream) cudaStreamDestroy(s->stream);
    pk_cuda_weights_free(&s->w);
    pk_free(s);
}

/* Everything but the weights: stream, cuBLAS, pool, state, buffers. */
static int session_init(pk_cuda_session *s)
{
    const pikv_config *c = &s->cfg;
    const int max_seq = s->params.max_seq;
    const size_t es = pk_cuda_dtype_size(s->params.dtype);
    const size_t block_bytes = 2 * (size_t)PK_CUDA_BLOCK * (size_t)c->head_dim * es;
    s->n_lh = c->n_layer * c->n_head;
    long blocks = s->params.pool_blocks;
    if (blocks <= 0)
        blocks = (long)max_seq * s->n_lh * ((c->n_positions + PK_CUDA_BLOCK - 1) / PK_CUDA_BLOCK);
    if (blocks > 0x7fffffffL) return pk_fail("CUDA session: pool of %ld blocks is too large", blocks);
    if (pk_block_pool_init(&s->pool, (int)blocks, PK_CUDA_BLOCK, block_bytes, max_seq, s->n_lh, c->n_positions))
        return -1;
    CU(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "creating a stream");
    BLAS(cublasCreate(&s->blas), "creating the handle");
    BLAS(cublasSetStream(s->blas, s->stream), "setting the stream");
    CU(cudaMalloc(&s->blas_workspace, CUBLAS_WORKSPACE), "allocating the cuBLAS workspace");
    /* A fixed workspace lets cuBLAS calls be captured in graphs. */
    BLAS(cublasSetWorkspace(s->blas, s->blas_workspace, CUBLAS_WORKSPACE), "setting the workspace");
    CU(cudaMalloc(&s->d_pool, (size_t)blocks * block_bytes), "allocating the KV block pool");
    const size_t table_len = (size_t)max_seq * (size_t)s->pool.max_blocks * (size_t)s->n_lh;
    CU(cudaMalloc((void **)&s->d_table, table_len * 4), "allocating the block table");
    CU(cudaMalloc((void **)&s->d_kv_len, (size_t)max_seq * s->n_lh * 4), "allocating the head lengths");
    CU(cudaMalloc((void **)&s->d_pos, (size_t)max_seq * 4), "allocating the positions");
    const int token_cap = c->n_positions > max_seq ? c->n_positions : max_seq;
    CU(cudaMalloc((void **)&s->d_tokens, (size_t)token_cap * 4), "allocating the token buffer");
    CU(cudaMalloc((void **)&s->d_ring, (size_t)max_seq * s->n_lh * sizeof(ring_state)), "allocating the rings");
    CU(cudaMemset(s->d_kv_len, 0, (size_t)max_seq * s->n_lh * 4), "clearing the head lengths");
    CU(cudaMemset(s->d_pos, 0, (size_t)max_seq * 4), "clearing the positions");
    CU(cudaMemset(s->d_ring, 0, (size_t)max_seq * s->n_lh * sizeof(ring_state)), "clearing the rings");
    s->h_pos = (int32_t *)pk_calloc((size_t)max_seq, 4, "CUDA positions");
    s->h_len = (int32_t *)pk_calloc((size_t)max_seq * s->n_lh, 4, "CUDA head lengths");
    s->h_ring = (ring_state *)pk_calloc((size_t)max_seq * s->n_lh, sizeof(ring_state), "CUDA rings");
    s->h_need = (int32_t *)pk_calloc((size_t)s->n_lh, 4, "CUDA head needs");
    s->graphs = (cudaGraphExec_t *)pk_calloc((size_t)max_seq + 1, sizeof *s->graphs, "CUDA graphs");
    s->greedy_graphs = (cudaGraphExec_t *)pk_calloc((size_t)max_seq + 1, sizeof *s->greedy_graphs, "CUDA graphs");
    s->greedy_runs = (cudaGraphExec_t *)pk_calloc((size_t)max_seq + 1, sizeof *s->greedy_runs, "CUDA graphs");
    if (!s->h_pos || !s->h_len || !s->h_ring || !s->h_need || !s->graphs || !s->greedy_graphs || !s->greedy_runs)
        return -1;

    cudaDeviceProp p;
    int device = 0;
    CU(cudaGetDevice(&device), "finding the current device");
    CU(cudaGetDeviceProperties(&p, device), "reading the device's properties");
    s->n_sm = p.multiProcessorCount;
    s->smem_optin = p.sharedMemPerBlockOptin;
    /* The most splits any batch uses: one sequence's, or two's (fewer for more sequences). */
    s->split_cap = decode_splits(s, 1) > decode_splits(s, 2) ? decode_splits(s, 1) : decode_splits(s, 2);
    const size_t heads = (size_t)max_seq * c->n_head;
    CU(cudaMalloc((void **)&s->d_part, heads * s->split_cap * (c->head_dim + 2) * 4), "allocating attention partials");
    CU(cudaMalloc((void **)&s->d_done, heads * 4), "allocating attention counts");
    CU(cudaMalloc(&s->d_discard, (size_t)max_seq * 2 * c->n_embd * es), "allocating the discard rows");
    CU(cudaMemset(s->d_done, 0, heads * 4), "clearing attention counts");
    /* The matrix-vector path stages its rows, and a layer norm's weights, in shared memory. */
    const int widest = c->n_embd > c->n_inner ? c->n_embd : c->n_inner;
    const size_t smem_cap = gemv_smem_cap(s);
    s->gemv_rows = MAX_GEMV_ROWS;
    while (s->gemv_rows >= 1 && (gemv_smem(s->gemv_rows, widest, false) > smem_cap ||
                                 gemv_smem(s->gemv_rows, c->n_embd, true) > smem_cap))
        s->gemv_rows--;
    if (s->gemv_rows < 1) return pk_fail("CUDA session: n_inner %d is too wide for the decode kernels", c->n_inner);
    int rc = -1;
    const split_input parts = decode_parts(s);
    const size_t parts_bytes = parts.n_split ? gemv_smem(1, c->n_embd, false, parts) : 0;
    with_storage_type(s, [&](auto w) { rc = prepare_kernels<decltype(w)>(c, s->gemv_rows, parts_bytes); });
    if (rc) return -1;
    const int small_rows = max_seq > s->gemv_rows ? max_seq : s->gemv_rows;
    if (alloc_activations(&s->small, c, small_rows, small_rows)) return -1;
    CU(cudaMallocHost((void **)&s->h_tokens, (size_t)max_seq * 4), "allocating pinned tokens");
    const size_t chosen = (size_t)max_seq * (c->n_positions + 1) * 4;
    CU(cudaMallocHost((void **)&s->h_chosen, chosen), "allocating pinned choices");
    CU(cudaMalloc((void **)&s->d_chosen, chosen), "allocating the choices");
    CU(cudaMallocHost((void **)&s->h_logits, (size_t)small_rows * c->vocab_size * 4), "allocating pinned logits");
    return 0;
}

extern "C" pk_cuda_session *pk_cuda_session_new(const pikv_model *m, const pk_cuda_params *p)
{
    const pikv_config *c = &m->cfg;
    if (p->max_seq < 1) return pk_fail("CUDA session: max_seq must be at least 1 (got %d)", p->max_seq), nullptr;
    const size_t vec = 16 / pk_cuda_dtype_size(p->dtype);
    if (c->n_embd % (int)vec || c->n_inner % (int)vec || c->head_dim * c->n_head != c->n_embd)
        return pk_fail("CUDA session: n_embd %d and n_inner %d must be multiples of %zu", c->n_embd, c->n_inner, vec),
               nullptr;
    if (!pk_cuda_available()) return nullptr;
    pk_cuda_session *s = (pk_cuda_session *)pk_calloc(1, sizeof *s, "CUDA session");
    if (!s) return nullptr;
    s->model = m;
    s->cfg = *c;
    s->params = *p;
    if (pk_cuda_weights_upload(&s->w, m, p->dtype) || session_init(s)) {
        pk_cuda_session_free(s);
        return nullptr;
    }
    return s;
}

/* Copy the block-table entries changed since the last call to the device. */
static int upload_table(pk_cuda_session *s)
{
    pk_block_pool *p = &s->pool;
    if (p->dirty_hi > p->dirty_lo)
        CU(cudaMemcpyAsync(s->d_table + p->dirty_lo, p->table + p->dirty_lo, (p->dirty_hi - p->dirty_lo) * 4,
                           cudaMemcpyHostToDevice, s->stream),
           "copying the block table");
    pk_block_pool_clean(p);
    return 0;
}

/* Every id inside the vocabulary. */
static int check_tokens(const pk_cuda_session *s, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->cfg.vocab_size)
            return pk_fail("token id %d is outside the vocabulary (0..%d)", ids[i], s->cfg.vocab_size - 1);
    return 0;
}

/* After a call: the host copies of positions, lengths and rings follow the
 * device's (advance_kernel). */
static void advance_host(pk_cuda_session *s, int seq0, int n_seq, int rows_per_seq)
{
    for (int b = seq0; b < seq0 + n_seq; b++) {
        s->h_pos[b] += rows_per_seq;
        for (int i = 0; i < s->n_lh; i++) {
            const size_t bh = (size_t)b * s->n_lh + i;
            ring_advance(s->h_ring[bh], s->h_len[bh], rows_per_seq);
        }
    }
}

/* Whether some head of sequence seq is a streaming ring. */
static int has_rings(const pk_cuda_session *s, int seq)
{
    for (int i = 0; i < s->n_lh; i++)
        if (s->h_ring[(size_t)seq * s->n_lh + i].recent > 0) return 1;
    return 0;
}

/* Whether every streaming head of sequence seq holds its entries in position
 * order: a ring that has not yet rolled (the next token it overwrites is the
 * oldest after its sinks). A multi-token call appends to such heads and shows
 * each row its window (attention_kernel); trim_windows then cuts them back. */
static int rings_in_order(const pk_cuda_session *s, int seq)
{
    for (int i = 0; i < s->n_lh; i++) {
        const ring_state r = s->h_ring[(size_t)seq * s->n_lh + i];
        if (r.recent > 0 && r.next != r.sink) return 0;
    }
    return 1;
}

/* Defined with the other keeps (below): cuts the rings back after a multi-token call. */
static int trim_windows(pk_cuda_session *s, int seq);

/* Whether every head of sequence seq holds each of its tokens (no press has compressed it). */
static int is_whole(const pk_cuda_session *s, int seq)
{
    for (int i = 0; i < s->n_lh; i++)
        if (s->h_len[(size_t)seq * s->n_lh + i] != s->h_pos[seq]) return 0;
    return !has_rings(s, seq);
}

/* Give every head of sequences seq0..seq0+n_seq-1 the blocks for `steps`
 * more tokens (a ring grows only up to its window). */
static int reserve_steps(pk_cuda_session *s, int seq0, int n_seq, int steps)
{
    for (int b = seq0; b < seq0 + n_seq; b++) {
        if (s->h_pos[b] + steps > s->cfg.n_positions)
            return pk_fail("sequence %d: %d more tokens from position %d pass the model's %d positions (n_positions)",
                           b, steps, s->h_pos[b], s->cfg.n_positions);
        for (int i = 0; i < s->n_lh; i++) {
            const size_t bh = (size_t)b * s->n_lh + i;
            s->h_need[i] = entries_after(s->h_ring[bh], s->h_len[bh], steps);
        }
        if (pk_block_pool_reserve_heads(&s->pool, b, s->h_need, 0)) return -1;
    }
    return 0;
}

/* Room for every layer's queries of n rows. */
static int ensure_queries(pk_cuda_session *s, int n)
{
    if (n <= s->query_cap) return 0;
    cudaFree(s->d_queries);
    s->d_queries = NULL;
    s->query_cap = s->query_rows = 0;
    CU(cudaMalloc((void **)&s->d_queries, (size_t)s->cfg.n_layer * n * s->cfg.n_embd * 4), "allocating the queries");
    s->query_cap = n;
    return 0;
}

/* pk_cuda_forward, also keeping each layer's queries on the device when keep_queries. */
static int forward(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits,
                   int keep_queries)
{
    if (seq < 0 || seq >= s->params.max_seq)
        return pk_fail("CUDA forward: sequence %d outside 0..%d", seq, s->params.max_seq - 1);
    if (n <= 0) return pk_fail("forward: no tokens to run");
    if (s->h_pos[seq] + n > s->cfg.n_positions)
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", n,
                       s->h_pos[seq], s->cfg.n_positions);
    if (check_tokens(s, ids, n)) return -1;
    if (n > 1 && s->n_rank > 0)
        return pk_fail("CUDA forward: this GPU holds part of each head (one of %d), so only decode steps run",
                       s->n_rank);
    const int routed = s->route && s->route_seq == seq;
    if (routed && s->route_stale)
        return pk_fail("CUDA forward: sequence %d was cut or compressed since its query-time routing began", seq);
    const int windows = n > 1 && has_rings(s, seq);
    if (windows && keep_queries) return pk_fail("CUDA forward: queries are kept for a prompt, not after a press");
    if (windows && !rings_in_order(s, seq)) {
        /* A ring that has rolled holds its window out of position order, so
         * tokens go in one at a time, each seeing the window as it stands at
         * its own position: what the CPU's window mask gives a multi-token
         * call. */
        const size_t V = (size_t)s->cfg.vocab_size;
        for (int i = 0; i < n; i++) {
            float *row_logits = logits && (all_logits || i == n - 1) ? logits + (all_logits ? i * V : 0) : nullptr;
            if (forward(s, seq, ids + i, 1, row_logits, 0, 0)) return -1;
        }
        return 0;
    }
    if (n == 1 ? reserve_steps(s, seq, 1, 1)
               : pk_block_pool_reserve_heads(&s->pool, seq, s->h_len + (size_t)seq * s->n_lh, n))
        return -1;
    if (upload_table(s)) return -1;
    activations *a = &s->small;
    if (n > s->small.rows) {
        if (ensure_large(s, n)) return -1;
        a = &s->large;
    }
    CU(cudaMemcpyAsync(s->d_tokens, ids, (size_t)n * 4, cudaMemcpyHostToDevice, s->stream), "copying tokens");
    if (keep_queries) {
        s->query_rows = 0;
        if (ensure_queries(s, n)) return -1;
    }
    if (enqueue(s, a, seq, 1, n, logits != NULL, all_logits, keep_queries ? s->d_queries : nullptr, routed)) return -1;
    if (logits)
        CU(cudaMemcpyAsync(logits, a->logits, (size_t)(all_logits ? n : 1) * s->cfg.vocab_size * 4,
                           cudaMemcpyDeviceToHost, s->stream),
           "copying logits");
    CU(cudaStreamSynchronize(s->stream), "running the forward pass");
    advance_host(s, seq, 1, n);
    if (keep_queries) s->query_rows = n;
    return windows ? trim_windows(s, seq) : 0;
}

extern "C" int pk_cuda_forward(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits)
{
    return forward(s, seq, ids, n, logits, all_logits, 0);
}

extern "C" int pk_cuda_forward_queries(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits,
                                       int all_logits)
{
    return forward(s, seq, ids, n, logits, all_logits, 1);
}

extern "C" int pk_cuda_read_queries(pk_cuda_session *s, int layer, float *queries)
{
    if (layer < 0 || layer >= s->cfg.n_layer || !s->query_rows)
        return pk_fail("CUDA queries: no queries kept for layer %d", layer);
    const size_t n = (size_t)s->query_rows * s->cfg.n_embd;
    CU(cudaMemcpy(queries, s->d_queries + (size_t)layer * n, n * 4, cudaMemcpyDeviceToHost), "copying queries");
    return 0;
}

/* Enqueue one decode step of sequences 0..n_seq-1; a greedy one then writes
 * each sequence's choice as its next input token and at the position it will
 * take in d_chosen, so that steps follow each other on the device. */
static int enqueue_step(pk_cuda_session *s, int n_seq, int greedy)
{
    if (enqueue(s, &s->small, 0, n_seq, 1, 1, 0)) return -1;
    s->kernels_per_decode = s->launches;
    if (!greedy) return 0;
    argmax_kernel<<<n_seq, 1024, 0, s->stream>>>(s->small.logits, s->cfg.vocab_size, s->d_tokens, s->d_pos,
                                                s->d_chosen, s->cfg.n_positions + 1);
    CU(cudaGetLastError(), "launching the greedy choice");
    return 0;
}

/* Capture `steps` decode steps of n_seq sequences once (one, or a run of
 * GREEDY_RUN greedy ones); later calls replay them. */
static int decode_graph(pk_cuda_session *s, int n_seq, int greedy, int steps, cudaGraphExec_t *exec)
{
    cudaGraphExec_t *slot = (steps > 1 ? s->greedy_runs : greedy ? s->greedy_graphs : s->graphs) + n_seq;
    if (*slot) {
        *exec = *slot;
        return 0;
    }
    cudaGraph_t g;
    CU(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal), "starting graph capture");
    int rc = 0;
    for (int i = 0; i < steps && !rc; i++) rc = enqueue_step(s, n_seq, greedy);
    cudaError_t e = cudaStreamEndCapture(s->stream, &g);
    if (rc) {
        if (e == cudaSuccess) cudaGraphDestroy(g);
        return -1;
    }
    if (e != cudaSuccess) return cuda_fail(e, "capturing the decode step");
    e = cudaGraphInstantiate(slot, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return cuda_fail(e, "instantiating the decode graph");
    *exec = *slot;
    return 0;
}

/* Fail when sequences 0..n_seq-1 include one whose queries are routed: its
 * calls stop at every layer for the host, so they run alone and unrecorded. */
static int routed_among(const pk_cuda_session *s, int n_seq, const char *what)
{
    if (s->route && s->route_seq < n_seq)
        return pk_fail("CUDA %s: sequence %d routes its queries on the host layer by layer, so its steps run one "
                       "call at a time (pk_cuda_forward), not in a batch or a graph",
                       what, s->route_seq);
    return 0;
}

/* Run `steps` decode steps of sequences 0..n_seq-1 from tokens ids, replayed
 * or launched, with one synchronisation at the end: one step with logits
 * [n_seq][V] to the host, or greedy steps whose choices feed the next step on
 * the device, each sequence's steps choices going to chosen [steps][n_seq]. */
static int decode_steps(pk_cuda_session *s, const int32_t *ids, int n_seq, int steps, float *logits, int32_t *chosen)
{
    if (n_seq < 1 || n_seq > s->params.max_seq)
        return pk_fail("CUDA decode: %d sequences, the session holds 1..%d", n_seq, s->params.max_seq);
    if (steps < 1 || (logits && steps != 1)) return pk_fail("CUDA decode: %d steps", steps);
    if (routed_among(s, n_seq, "decode")) return -1;
    if (check_tokens(s, ids, n_seq) || reserve_steps(s, 0, n_seq, steps) || upload_table(s)) return -1;
    const int greedy = chosen != NULL;
    memcpy(s->h_tokens, ids, (size_t)n_seq * 4);
    CU(cudaMemcpyAsync(s->d_tokens, s->h_tokens, (size_t)n_seq * 4, cudaMemcpyHostToDevice, s->stream),
       "copying tokens");
    /* An exchange between GPUs is a host call in the middle of each step, so such steps are launched, not replayed. */
    const int replay = s->params.use_graphs && !s->exchange;
    cudaGraphExec_t one = nullptr, run = nullptr;
    if (replay && decode_graph(s, n_seq, greedy, 1, &one)) return -1;
    if (replay && greedy && steps >= GREEDY_RUN && decode_graph(s, n_seq, 1, GREEDY_RUN, &run)) return -1;
    for (int i = 0; i < steps;) {
        if (run && steps - i >= GREEDY_RUN) {
            CU(cudaGraphLaunch(run, s->stream), "replaying the decode graph");
            i += GREEDY_RUN;
            continue;
        }
        if (one) CU(cudaGraphLaunch(one, s->stream), "replaying the decode graph");
        else if (enqueue_step(s, n_seq, greedy)) return -1;
        i++;
    }
    const size_t bytes = (size_t)n_seq * s->cfg.vocab_size * 4, row = (size_t)s->cfg.n_positions + 1;
    if (logits)
        CU(cudaMemcpyAsync(s->h_logits, s->small.logits, bytes, cudaMemcpyDeviceToHost, s->stream), "copying logits");
    for (int b = 0; greedy && b < n_seq; b++) /* positions h_pos + 1 .. h_pos + steps */
        CU(cudaMemcpyAsync(s->h_chosen + (size_t)b * steps, s->d_chosen + b * row + s->h_pos[b] + 1, (size_t)steps * 4,
                           cudaMemcpyDeviceToHost, s->stream),
           "copying the greedy choices");
    CU(cudaStreamSynchronize(s->stream), "running the decode steps");
    if (logits) memcpy(logits, s->h_logits, bytes);
    for (int b = 0; greedy && b < n_seq; b++)
        for (int i = 0; i < steps; i++) chosen[(size_t)i * n_seq + b] = s->h_chosen[(size_t)b * steps + i];
    /* Step by step, as advance_kernel went: a full ring moves on one slot a step rather than growing. */
    for (int i = 0; i < steps; i++) advance_host(s, 0, n_seq, 1);
    return 0;
}

extern "C" int pk_cuda_decode(pk_cuda_session *s, const int32_t *ids, int n_seq, float *logits)
{
    return decode_steps(s, ids, n_seq, 1, logits, nullptr);
}

extern "C" int pk_cuda_decode_greedy(pk_cuda_session *s, const int32_t *ids, int n_seq, int32_t *next)
{
    return pk_cuda_decode_greedy_steps(s, ids, n_seq, 1, next);
}

extern "C" int pk_cuda_decode_greedy_steps(pk_cuda_session *s, const int32_t *ids, int n_seq, int steps,
                                           int32_t *chosen)
{
    if (!chosen) return pk_fail("CUDA greedy decode: no room for the choices");
    return decode_steps(s, ids, n_seq, steps, nullptr, chosen);
}

/* Put sequence seq at position pos with head i holding its first len[i]
 * entries (ring ring[i], or none when ring is NULL), freeing the blocks past
 * them, on the host and on the device. */
static int set_sequence(pk_cuda_session *s, int seq, int pos, const int32_t *len, const ring_state *ring)
{
    const size_t row = (size_t)seq * s->n_lh;
    for (int i = 0; i < s->n_lh; i++) {
        pk_block_pool_truncate_head(&s->pool, seq, i, len[i]);
        s->h_len[row + i] = len[i];
        s->h_ring[row + i] = ring ? ring[i] : ring_state{};
    }
    s->h_pos[seq] = pos;
    CU(cudaMemcpyAsync(s->d_pos + seq, s->h_pos + seq, 4, cudaMemcpyHostToDevice, s->stream), "copying positions");
    CU(cudaMemcpyAsync(s->d_kv_len + row, s->h_len + row, (size_t)s->n_lh * 4, cudaMemcpyHostToDevice, s->stream),
       "copying head lengths");
    CU(cudaMemcpyAsync(s->d_ring + row, s->h_ring + row, (size_t)s->n_lh * sizeof(ring_state), cudaMemcpyHostToDevice,
                       s->stream),
       "copying rings");
    CU(cudaStreamSynchronize(s->stream), "setting a sequence's lengths");
    return 0;
}

extern "C" int pk_cuda_truncate(pk_cuda_session *s, int seq, int len)
{
    if (seq < 0 || seq >= s->params.max_seq)
        return pk_fail("CUDA truncate: sequence %d outside 0..%d", seq, s->params.max_seq - 1);
    if (len < 0 || len > s->h_pos[seq])
        return pk_fail("CUDA truncate: length %d outside 0..%d", len, s->h_pos[seq]);
    if (len > 0 && !is_whole(s, seq))
        return pk_fail("CUDA truncate: sequence %d was compressed by a press, so it can only be cut back to 0 tokens",
                       seq);
    for (int i = 0; i < s->n_lh; i++) s->h_need[i] = len;
    if (s->route && seq == s->route_seq) s->route_stale = 1;
    return set_sequence(s, seq, len, s->h_need, nullptr);
}

extern "C" int pk_cuda_route_begin(pk_cuda_session *s, int seq, pk_cuda_route_fn route, void *ctx)
{
    if (seq < 0 || seq >= s->params.max_seq)
        return pk_fail("CUDA routing: sequence %d outside 0..%d", seq, s->params.max_seq - 1);
    if (!route) return pk_fail("CUDA routing: no router");
    if (s->n_rank > 0) return pk_fail("CUDA routing: this GPU holds part of each head (one of %d)", s->n_rank);
    const size_t P = (size_t)s->cfg.n_positions;
    /* Each buffer on first use, so that one that failed is tried again next time. */
    if (!s->d_route_len)
        CU(cudaMalloc((void **)&s->d_route_len, (size_t)s->n_lh * 4), "allocating the routed lengths");
    if (!s->d_route_slot)
        CU(cudaMalloc((void **)&s->d_route_slot, (size_t)s->n_lh * P * 8), "allocating the slot routes");
    if (!s->d_route_row) CU(cudaMalloc((void **)&s->d_route_row, P * s->cfg.n_head * 8), "allocating the row routes");
    if (!s->h_route_row)
        CU(cudaMallocHost((void **)&s->h_route_row, P * s->cfg.n_head * 8), "allocating the row routes");
    if (!s->h_route_q)
        CU(cudaMallocHost((void **)&s->h_route_q, P * s->cfg.n_embd * 4), "allocating the queries to route");
    CU(cudaMemsetAsync(s->d_route_len, 0, (size_t)s->n_lh * 4, s->stream), "clearing the routed lengths");
    CU(cudaStreamSynchronize(s->stream), "starting the routing");
    s->route_seq = seq;
    s->route_stale = 0;
    s->route = route;
    s->route_ctx = ctx;
    return 0;
}

extern "C" int pk_cuda_route_head(pk_cuda_session *s, int layer, int head, const uint64_t *masks, int n)
{
    if (!s->route) return pk_fail("CUDA routing: no sequence is routed");
    if (layer < 0 || layer >= s->cfg.n_layer || head < 0 || head >= s->cfg.n_head)
        return pk_fail("CUDA routing: layer %d head %d out of range", layer, head);
    const size_t lh = (size_t)s->route_seq * s->n_lh + (size_t)layer * s->cfg.n_head + head;
    if (n < 0 || n > s->h_len[lh] || (n > 0 && !masks))
        return pk_fail("CUDA routing: %d slot masks for layer %d head %d, which holds %d", n, layer, head,
                       s->h_len[lh]);
    if (s->h_ring[lh].recent > 0) return pk_fail("CUDA routing: layer %d head %d streams", layer, head);
    const int local = layer * s->cfg.n_head + head;
    const int32_t len = n;
    if (n)
        CU(cudaMemcpyAsync(s->d_route_slot + (size_t)local * s->cfg.n_positions, masks, (size_t)n * 8,
                           cudaMemcpyHostToDevice, s->stream),
           "sending slot routes");
    CU(cudaMemcpyAsync(s->d_route_len + local, &len, 4, cudaMemcpyHostToDevice, s->stream), "sending a routed length");
    CU(cudaStreamSynchronize(s->stream), "sending routes");
    return 0;
}

extern "C" void pk_cuda_route_end(pk_cuda_session *s)
{
    s->route_stale = 0;
    s->route = nullptr;
    s->route_ctx = nullptr;
}

extern "C" int pk_cuda_position(const pk_cuda_session *s, int seq)
{
    return seq >= 0 && seq < s->params.max_seq ? s->h_pos[seq] : -1;
}

extern "C" void pk_cuda_get_stats(const pk_cuda_session *s, pk_cuda_stats *st)
{
    memset(st, 0, sizeof *st);
    st->weight_bytes = s->w.bytes;
    st->position_row_bytes = (size_t)s->cfg.n_embd * sizeof(float);
    st->position_bytes = (size_t)s->cfg.n_positions * st->position_row_bytes;
    st->pool_bytes = (size_t)s->pool.n_blocks * s->pool.block_bytes;
    st->block_bytes = s->pool.block_bytes;
    st->kv_bytes_in_use = pk_block_pool_bytes_in_use(&s->pool);
    st->kv_high_water = pk_block_pool_high_water_bytes(&s->pool);
    st->blocks_in_use = pk_block_pool_in_use(&s->pool);
    st->kernels_per_decode = s->kernels_per_decode;
}

extern "C" int pk_cuda_generate_greedy(pk_cuda_session *s, int seq, const int32_t *prompt, int n_prompt, int n_new,
                                       int32_t *out)
{
    if (n_new <= 0) return 0;
    if (seq != 0 && n_new > 1) return pk_fail("CUDA greedy generation runs on sequence 0 (got %d)", seq);
    const int V = s->cfg.vocab_size;
    float *logits = (float *)pk_malloc_array((size_t)V, sizeof(float), "logits");
    if (!logits) return -1;
    const pikv_sampling greedy = {1, 1.f, 0, 1.f, 0};
    uint64_t rng = 0;
    int rc = pk_cuda_forward(s, seq, prompt, n_prompt, logits, 0);
    for (int i = 0; rc == 0 && i < n_new; i++) {
        out[i] = pikv_sample(logits, V, &greedy, &rng);
        if (i + 1 < n_new) rc = pk_cuda_decode(s, &out[i], 1, logits);
    }
    pk_free(logits);
    return rc;
}

extern "C" double pk_cuda_copy_bandwidth(void)
{
    const size_t bytes = (size_t)2 << 30;
    void *a = nullptr, *b = nullptr;
    cudaEvent_t t0, t1;
    float ms = 0;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
        cudaFree(a);
        pk_fail("CUDA bandwidth: cannot allocate 2 x 2 GiB");
        return -1;
    }
    cudaMemset(a, 1, bytes);
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    for (int i = 0; i < 3; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t0);
    for (int i = 0; i < 10; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    cudaEventElapsedTime(&ms, t0, t1);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    cudaFree(a);
    cudaFree(b);
    return ms > 0 ? 10.0 * 2.0 * (double)bytes / (ms * 1e-3) : -1;
}

extern "C" int pk_cuda_time_replay(pk_cuda_session *s, int n_seq, int steps, double *us_per_step)
{
    if (!s->params.use_graphs) return pk_fail("CUDA replay timing: the session does not use graphs");
    if (n_seq < 1 || n_seq > s->params.max_seq) return pk_fail("CUDA replay timing: %d sequences", n_seq);
    if (steps < 1) return pk_fail("CUDA replay timing: %d steps", steps);
    if (routed_among(s, n_seq, "replay timing")) return -1;
    const size_t heads = (size_t)n_seq * s->n_lh;
    int32_t *len = (int32_t *)pk_malloc_array(heads, 4, "saved head lengths");
    ring_state *ring = (ring_state *)pk_malloc_array(heads, sizeof *ring, "saved rings");
    int32_t *pos = (int32_t *)pk_malloc_array((size_t)n_seq, 4, "saved positions");
    int rc = len && ring && pos ? 0 : -1;
    if (rc == 0) {
        memcpy(len, s->h_len, heads * 4);
        memcpy(ring, s->h_ring, heads * sizeof *ring);
        memcpy(pos, s->h_pos, (size_t)n_seq * 4);
    }
    if (rc == 0) rc = reserve_steps(s, 0, n_seq, steps);
    cudaGraphExec_t exec = nullptr;
    if (rc == 0) rc = upload_table(s);
    if (rc == 0) rc = decode_graph(s, n_seq, 0, 1, &exec);
    cudaEvent_t t0 = nullptr, t1 = nullptr;
    if (rc == 0 && (cudaEventCreate(&t0) != cudaSuccess || cudaEventCreate(&t1) != cudaSuccess))
        rc = pk_fail("CUDA replay timing: cannot create events");
    if (rc == 0) {
        cudaEventRecord(t0, s->stream);
        for (int i = 0; i < steps; i++) cudaGraphLaunch(exec, s->stream);
        cudaEventRecord(t1, s->stream);
        cudaError_t e = cudaEventSynchronize(t1);
        float ms = 0;
        cudaEventElapsedTime(&ms, t0, t1);
        if (e != cudaSuccess) rc = cuda_fail(e, "replaying the decode graph");
        *us_per_step = 1e3 * ms / steps;
    }
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    /* The device advanced every sequence by `steps`; put each back where it was
     * (a ring's entries now hold the replayed tokens). */
    for (int b = 0; len && ring && pos && b < n_seq; b++)
        if (set_sequence(s, b, pos[b], len + (size_t)b * s->n_lh, ring + (size_t)b * s->n_lh) && rc == 0) rc = -1;
    pk_free(len);
    pk_free(ring);
    pk_free(pos);
    return rc;
}

/* The press buffers, allocated on first use: a layer's entries as float32 and
 * the kept slots of its heads. */
static int ensure_press_buffers(pk_cuda_session *s)
{
    if (s->d_layer) return 0;
    const size_t entries = (size_t)s->cfg.n_head * s->cfg.n_positions;
    CU(cudaMalloc((void **)&s->d_layer, 2 * entries * s->cfg.head_dim * 4), "allocating the press buffer");
    CU(cudaMalloc((void **)&s->d_keep, entries * 4), "allocating the kept slots");
    CU(cudaMalloc((void **)&s->d_n_keep, (size_t)s->cfg.n_head * 4), "allocating the kept counts");
    const size_t P = (size_t)s->cfg.n_positions, hd = (size_t)s->cfg.head_dim;
    CU(cudaMalloc((void **)&s->d_lse, P * 4), "allocating the measures' scratch");
    CU(cudaMalloc((void **)&s->d_measure, 2 * P * 8), "allocating the measures' scratch");
    CU(cudaMalloc((void **)&s->d_stats, (hd + hd * hd) * 8), "allocating the measures' scratch");
    return 0;
}

/* That heads head0..head0+n_heads-1 of `layer` in sequence seq exist and
 * each holds at least len entries (what a read of them may cover). */
static int check_heads_hold(const pk_cuda_session *s, int seq, int layer, int head0, int n_heads, int len,
                            const char *what)
{
    if (seq < 0 || seq >= s->params.max_seq || layer < 0 || layer >= s->cfg.n_layer || head0 < 0 || n_heads < 1 ||
        head0 + n_heads > s->cfg.n_head)
        return pk_fail("CUDA %s: sequence %d, layer %d or heads %d..%d out of range", what, seq, layer, head0,
                       head0 + n_heads - 1);
    /* Inside a routing callback the call's own rows are already in the cache. */
    const int in_call = s->route && seq == s->route_seq ? s->route_rows : 0;
    for (int h = head0; h < head0 + n_heads; h++)
        if (len < 0 || len > s->h_len[(size_t)seq * s->n_lh + layer * s->cfg.n_head + h] + in_call)
            return pk_fail("CUDA %s: layer %d head %d holds fewer than %d entries", what, layer, h, len);
    return 0;
}

extern "C" int pk_cuda_read_heads(pk_cuda_session *s, int seq, int layer, int head0, int n_heads, int len, float *k,
                                  float *v)
{
    if (check_heads_hold(s, seq, layer, head0, n_heads, len, "read")) return -1;
    if (len == 0) return 0;
    if (ensure_press_buffers(s)) return -1;
    const size_t n = (size_t)n_heads * len * s->cfg.head_dim;
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        read_heads_kernel<W><<<dim3((len + 7) / 8, n_heads), 256, 0, s->stream>>>(make_ctx<W>(s, seq, 1), seq, layer,
                                                                                  head0, len, s->d_layer,
                                                                                  s->d_layer + n);
    });
    CU(cudaGetLastError(), "reading heads");
    CU(cudaMemcpyAsync(k, s->d_layer, n * 4, cudaMemcpyDeviceToHost, s->stream), "copying keys");
    CU(cudaMemcpyAsync(v, s->d_layer + n, n * 4, cudaMemcpyDeviceToHost, s->stream), "copying values");
    CU(cudaStreamSynchronize(s->stream), "reading heads");
    return 0;
}

/* Check a measure's request, make the press buffers and send the slots; the
 * kernels then read them from d_keep. */
static int measure_slots(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                         const char *what)
{
    if (check_heads_hold(s, seq, layer, head, 1, 0, what)) return -1;
    const int len = s->h_len[(size_t)seq * s->n_lh + layer * s->cfg.n_head + head];
    if (n < 0 || n > len || (n > 0 && !slots)) return pk_fail("CUDA %s: %d of %d entries", what, n, len);
    for (int j = 0; j < n; j++)
        if (slots[j] < 0 || slots[j] >= len || (j > 0 && slots[j] <= slots[j - 1]))
            return pk_fail("CUDA %s: layer %d head %d: slots must ascend within 0..%d", what, layer, head, len - 1);
    if (s->h_ring[(size_t)seq * s->n_lh + layer * s->cfg.n_head + head].recent > 0)
        return pk_fail("CUDA %s: layer %d head %d streams already", what, layer, head);
    if (ensure_press_buffers(s)) return -1;
    if (n) CU(cudaMemcpyAsync(s->d_keep, slots, (size_t)n * 4, cudaMemcpyHostToDevice, s->stream), "sending slots");
    return 0;
}

/* Layer `layer`'s kept queries of one head (rows n_embd apart). */
static const float *head_queries(const pk_cuda_session *s, int layer, int head)
{
    return s->d_queries + (size_t)layer * s->query_rows * s->cfg.n_embd + (size_t)head * s->cfg.head_dim;
}

/* Copy `bytes` of a measure's result to the host and wait for it. */
static int measure_result(pk_cuda_session *s, void *out, const void *d_out, size_t bytes, const char *what)
{
    CU(cudaGetLastError(), what);
    if (bytes) CU(cudaMemcpyAsync(out, d_out, bytes, cudaMemcpyDeviceToHost, s->stream), what);
    CU(cudaStreamSynchronize(s->stream), what);
    return 0;
}

extern "C" int pk_cuda_attention_sums(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                                      int row0, int rows, float scale, double *out)
{
    if (row0 < 0 || rows < 1 || row0 + rows > s->query_rows)
        return pk_fail("CUDA attention sums: rows %d..%d outside the %d kept queries", row0, row0 + rows - 1,
                       s->query_rows);
    if (measure_slots(s, seq, layer, head, slots, n, "attention sums")) return -1;
    if (n == 0) return 0;
    const int lh = layer * s->cfg.n_head + head, C = s->cfg.n_embd;
    const float *q = head_queries(s, layer, head) + (size_t)row0 * C;
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        const rows_ctx<W> c = make_ctx<W>(s, seq, 1);
        row_logsumexp_kernel<W><<<rows, LSE_WARPS * 32, 0, s->stream>>>(c, seq, lh, s->d_keep, n, q, C, row0,
                                                                             scale, s->d_lse);
        attention_sums_kernel<W><<<(n + MEASURE_WARPS - 1) / MEASURE_WARPS, MEASURE_WARPS * 32, 0, s->stream>>>(
            c, seq, lh, s->d_keep, n, q, C, row0, rows, scale, s->d_lse, s->d_measure);
    });
    return measure_result(s, out, s->d_measure, (size_t)n * 8, "computing attention sums");
}

extern "C" int pk_cuda_key_norms(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                                 float *norms)
{
    if (measure_slots(s, seq, layer, head, slots, n, "key norms")) return -1;
    if (n == 0) return 0;
    const int lh = layer * s->cfg.n_head + head;
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        key_norms_kernel<W><<<(n + 255) / 256, 256, 0, s->stream>>>(make_ctx<W>(s, seq, 1), seq, lh, s->d_keep, n,
                                                                    s->d_lse);
    });
    return measure_result(s, norms, s->d_lse, (size_t)n * 4, "computing key norms");
}

extern "C" int pk_cuda_expected_logits(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                                       int first_row, double *logit, double *value_sq)
{
    if (first_row < 0 || first_row >= s->query_rows)
        return pk_fail("CUDA expected logits: row %d outside the %d kept queries", first_row, s->query_rows);
    if (measure_slots(s, seq, layer, head, slots, n, "expected logits")) return -1;
    if (n == 0) return 0;
    const int lh = layer * s->cfg.n_head + head, hd = s->cfg.head_dim;
    const size_t P = (size_t)s->cfg.n_positions;
    double *mu = s->d_stats, *cov = s->d_stats + hd;
    query_statistics_kernel<<<(hd * hd + 255) / 256, 256, 0, s->stream>>>(
        head_queries(s, layer, head), s->cfg.n_embd, first_row, s->query_rows, hd, mu, cov);
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        expected_logits_kernel<W><<<(n + 127) / 128, 128, 0, s->stream>>>(make_ctx<W>(s, seq, 1), seq, lh, s->d_keep,
                                                                          n, mu, cov, s->d_measure, s->d_measure + P);
    });
    if (measure_result(s, logit, s->d_measure, (size_t)n * 8, "computing expected logits")) return -1;
    return measure_result(s, value_sq, s->d_measure + P, (size_t)n * 8, "computing expected logits");
}

/* The smallest power of two >= x (x >= 1). */
static unsigned next_pow2(unsigned x)
{
    unsigned p = 1;
    while (p < x) p <<= 1;
    return p;
}

/* The clustering's scratch on the device, grown to `bytes` when smaller;
 * NULL (pk_fail) when the device has no room. */
static char *cluster_scratch(pk_cuda_session *s, size_t bytes)
{
    if (bytes > s->d_kmeans_bytes) {
        cudaFree(s->d_kmeans);
        s->d_kmeans = NULL;
        s->d_kmeans_bytes = 0;
        if (cudaMalloc(&s->d_kmeans, bytes) != cudaSuccess) {
            cudaGetLastError();
            pk_fail("CUDA: no room for %zu bytes of clustering scratch", bytes);
            return NULL;
        }
        s->d_kmeans_bytes = bytes;
    }
    return (char *)s->d_kmeans;
}

extern "C" int pk_cuda_kmeans(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n, int k,
                              int iterations, float *centroids, int *assign)
{
    if (k < 1 || iterations < 1 || n < 1)
        return pk_fail("CUDA k-means: %d keys into %d clusters over %d iterations", n, k, iterations);
    if (measure_slots(s, seq, layer, head, slots, n, "k-means")) return -1;
    /* Scratch: the sort keys, the sums, the centroids, the next and the last
     * assignments; the unit keys go to the press buffer. */
    const size_t hd = (size_t)s->cfg.head_dim;
    const unsigned pairs_pow2 = next_pow2((unsigned)n * (unsigned)k);
    char *at = cluster_scratch(s, (size_t)pairs_pow2 * 8 + (size_t)k * hd * 12 + 2 * (size_t)n * 4);
    if (!at) return -1;
    kmeans_scratch sc;
    sc.unit = s->d_layer;
    sc.order = (unsigned long long *)at;
    sc.sum = (double *)(at += (size_t)pairs_pow2 * 8);
    float *d_centroids = (float *)(at += (size_t)k * hd * 8);
    sc.next = (int *)(at += (size_t)k * hd * 4);
    int *d_assign = (int *)(at + (size_t)n * 4);
    /* The sort keys go to shared memory when they fit (a bitonic sort there
     * is many times faster than in global memory), beside the cluster sizes
     * and the keys' taken flags. */
    const size_t flags = (size_t)k * 4 + (size_t)n, keys = (size_t)pairs_pow2 * 8;
    const size_t room = s->smem_optin - 1024; /* the kernel's own static shared memory comes out of it too */
    const int sort_in_shared = keys + flags <= room;
    const size_t shared = (sort_in_shared ? keys : 0) + flags;
    if (shared > room)
        return pk_fail("CUDA k-means: %d keys into %d clusters need %zu bytes of shared memory, the GPU has %zu", n, k,
                       shared, room);
    const int lh = layer * s->cfg.n_head + head;
    cudaError_t err = cudaSuccess;
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        if (shared > 48 * 1024)
            err = cudaFuncSetAttribute(kmeans_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared);
        if (err == cudaSuccess)
            kmeans_kernel<W><<<1, KMEANS_THREADS, shared, s->stream>>>(make_ctx<W>(s, seq, 1), seq, lh, s->d_keep, n,
                                                                       k, iterations, pairs_pow2, sort_in_shared, sc,
                                                                       d_centroids, d_assign);
    });
    CU(err, "k-means: its shared memory");
    if (measure_result(s, centroids, d_centroids, (size_t)k * s->cfg.head_dim * 4, "k-means on the GPU")) return -1;
    return measure_result(s, assign, d_assign, (size_t)n * 4, "k-means on the GPU");
}

extern "C" int pk_cuda_key_cosines(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                                   const float *centroids, int count, float *out)
{
    if (count < 1 || count > 1 << 16) return pk_fail("CUDA key cosines: %d centroids", count);
    if (measure_slots(s, seq, layer, head, slots, n, "key cosines")) return -1;
    if (n == 0) return 0;
    const size_t hd = (size_t)s->cfg.head_dim, cosines = (size_t)n * count;
    float *d_centroids = (float *)cluster_scratch(s, ((size_t)count * hd + cosines) * 4);
    if (!d_centroids) return -1;
    float *d_out = d_centroids + (size_t)count * hd;
    CU(cudaMemcpyAsync(d_centroids, centroids, (size_t)count * hd * 4, cudaMemcpyHostToDevice, s->stream),
       "sending centroids");
    const int lh = layer * s->cfg.n_head + head;
    with_storage_type(s, [&](auto w) {
        using W = decltype(w);
        key_cosines_kernel<W><<<(n + 127) / 128, 128, 0, s->stream>>>(make_ctx<W>(s, seq, 1), seq, lh, s->d_keep, n,
                                                                      d_centroids, count, s->d_layer, d_out);
    });
    return measure_result(s, out, d_out, cosines * 4, "key cosines on the GPU");
}

extern "C" int pk_cuda_head_queries(pk_cuda_session *s, int layer, int head, int row0, int rows, float *queries)
{
    if (layer < 0 || layer >= s->cfg.n_layer || head < 0 || head >= s->cfg.n_head || row0 < 0 || rows < 0 ||
        row0 + rows > s->query_rows)
        return pk_fail("CUDA queries: layer %d head %d rows %d..%d outside the %d kept", layer, head, row0,
                       row0 + rows - 1, s->query_rows);
    const size_t hd = (size_t)s->cfg.head_dim, C = (size_t)s->cfg.n_embd;
    if (rows)
        CU(cudaMemcpy2D(queries, hd * 4, head_queries(s, layer, head) + (size_t)row0 * C, C * 4, hd * 4, (size_t)rows,
                        cudaMemcpyDeviceToHost),
           "copying queries");
    return 0;
}

/* Move each head's kept slots of one layer of sequence seq to its first
 * slots on the device, give the blocks past them back to the pool, and set
 * each head's length and ring on the host and the device; a head with
 * detached[h] set takes no new entries (NULL: none). heads is [n_head], already
 * checked; a ring may be kept too (trim_windows). */
static int keep_heads(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads, const int *detached)
{
    const int H = s->cfg.n_head;
    const size_t row = (size_t)seq * s->n_lh + (size_t)layer * H;
    int stride = 1;
    for (int h = 0; h < H; h++)
        if (heads[h].n > stride) stride = heads[h].n;
    if (s->route && seq == s->route_seq) s->route_stale = 1;
    if (ensure_press_buffers(s)) return -1;
    int32_t *slots = (int32_t *)pk_malloc_array((size_t)H * stride, 4, "kept slots");
    int32_t *counts = (int32_t *)pk_malloc_array((size_t)H, 4, "kept counts");
    int rc = slots && counts ? 0 : -1;
    for (int h = 0; rc == 0 && h < H; h++) {
        counts[h] = heads[h].n;
        if (heads[h].n) memcpy(slots + (size_t)h * stride, heads[h].slots, (size_t)heads[h].n * 4);
    }
    if (rc == 0 && (cudaMemcpyAsync(s->d_keep, slots, (size_t)H * stride * 4, cudaMemcpyHostToDevice, s->stream) ||
                    cudaMemcpyAsync(s->d_n_keep, counts, (size_t)H * 4, cudaMemcpyHostToDevice, s->stream)))
        rc = pk_fail("CUDA keep: copying the kept slots failed");
    if (rc == 0) {
        with_storage_type(s, [&](auto w) {
            using W = decltype(w);
            compact_layer_kernel<W><<<H, 256, (size_t)PK_CUDA_BLOCK * 2 * s->cfg.head_dim * sizeof(W), s->stream>>>(
                make_ctx<W>(s, seq, 1), seq, layer, s->d_keep, s->d_n_keep, stride);
        });
        if (cudaGetLastError() != cudaSuccess) rc = pk_fail("CUDA keep: the compaction did not launch");
    }
    /* The compaction reads the old block table; the blocks past each head's
     * kept entries are freed after it, in stream order. */
    for (int h = 0; rc == 0 && h < H; h++) {
        const pk_cuda_head_keep *k = &heads[h];
        pk_block_pool_truncate_head(&s->pool, seq, layer * H + h, k->n);
        s->h_len[row + h] = k->n;
        s->h_ring[row + h] = k->recent > 0 ? ring_state{k->sink, k->recent, k->n == k->sink + k->recent ? k->next
                                                                                                        : k->sink, 0}
                                           : ring_state{};
        s->h_ring[row + h].detached = detached && detached[h];
    }
    if (rc == 0) rc = upload_table(s);
    if (rc == 0 && (cudaMemcpyAsync(s->d_kv_len + row, s->h_len + row, (size_t)H * 4, cudaMemcpyHostToDevice,
                                    s->stream) ||
                    cudaMemcpyAsync(s->d_ring + row, s->h_ring + row, (size_t)H * sizeof(ring_state),
                                    cudaMemcpyHostToDevice, s->stream) ||
                    cudaStreamSynchronize(s->stream)))
        rc = pk_fail("CUDA keep: updating the heads failed");
    pk_free(slots);
    pk_free(counts);
    return rc;
}

/* That k keeps ascending slots of a head of len entries (`what` names the call in the error). */
static int check_kept_slots(const char *what, int layer, int h, const pk_cuda_head_keep *k, int len)
{
    if (k->n < 0 || k->n > len || (k->n > 0 && !k->slots))
        return pk_fail("CUDA %s: layer %d head %d keeps %d of its %d entries", what, layer, h, k->n, len);
    for (int j = 0; j < k->n; j++)
        if (k->slots[j] < 0 || k->slots[j] >= len || (j > 0 && k->slots[j] <= k->slots[j - 1]))
            return pk_fail("CUDA %s: layer %d head %d: kept slots must ascend within 0..%d", what, layer, h, len - 1);
    return 0;
}

extern "C" int pk_cuda_keep(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads)
{
    if (seq < 0 || seq >= s->params.max_seq || layer < 0 || layer >= s->cfg.n_layer)
        return pk_fail("CUDA keep: sequence %d or layer %d out of range", seq, layer);
    const int H = s->cfg.n_head;
    const size_t row = (size_t)seq * s->n_lh + (size_t)layer * H;
    for (int h = 0; h < H; h++) {
        const pk_cuda_head_keep *k = &heads[h];
        const int len = s->h_len[row + h];
        if (s->h_ring[row + h].recent > 0) return pk_fail("CUDA keep: layer %d head %d streams already", layer, h);
        if (s->h_ring[row + h].detached) return pk_fail("CUDA keep: layer %d head %d is shared out", layer, h);
        if (check_kept_slots("keep", layer, h, k, len)) return -1;
        if (k->recent < 0 || k->sink < 0 || (k->recent > 0 && k->n > k->sink + k->recent))
            return pk_fail("CUDA keep: layer %d head %d keeps %d entries in a window of %d + %d", layer, h, k->n,
                           k->sink, k->recent);
        if (k->recent > 0 && k->n == k->sink + k->recent && (k->next < k->sink || k->next >= k->n))
            return pk_fail("CUDA keep: layer %d head %d: ring slot %d outside %d..%d", layer, h, k->next, k->sink,
                           k->n - 1);
    }
    return keep_heads(s, seq, layer, heads, nullptr);
}

extern "C" int pk_cuda_keep_shard(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads,
                                  const int *tail)
{
    if (seq < 0 || seq >= s->params.max_seq || layer < 0 || layer >= s->cfg.n_layer)
        return pk_fail("CUDA shard: sequence %d or layer %d out of range", seq, layer);
    const int H = s->cfg.n_head;
    const size_t row = (size_t)seq * s->n_lh + (size_t)layer * H;
    pk_cuda_head_keep *kept = (pk_cuda_head_keep *)pk_calloc((size_t)H, sizeof *kept, "shard heads");
    int *detached = (int *)pk_calloc((size_t)H, sizeof *detached, "shard heads");
    int rc = kept && detached ? 0 : -1;
    for (int h = 0; rc == 0 && h < H; h++) {
        const pk_cuda_head_keep *k = &heads[h];
        const ring_state r = s->h_ring[row + h];
        const int len = s->h_len[row + h];
        if (r.detached) rc = pk_fail("CUDA shard: layer %d head %d is shared out already", layer, h);
        else if (check_kept_slots("shard", layer, h, k, len)) rc = -1;
        /* A ring rolls in place over its window, so it stays whole on the GPU that takes its new entries. */
        else if (r.recent > 0 && !(tail[h] ? k->n == len : k->n == 0))
            rc = pk_fail("CUDA shard: layer %d head %d is a ring: it stays whole on the GPU that holds its tail", layer,
                         h);
        else if (tail[h] && len > 0 && (k->n == 0 || k->slots[k->n - 1] != len - 1))
            rc = pk_fail("CUDA shard: layer %d head %d: the GPU that takes new entries must hold the last one", layer,
                         h);
        kept[h] = *k;
        if (r.recent > 0 && k->n > 0) kept[h] = pk_cuda_head_keep{k->slots, k->n, r.sink, r.recent, r.next};
        detached[h] = !tail[h];
    }
    if (rc == 0) rc = keep_heads(s, seq, layer, kept, detached);
    pk_free(kept);
    pk_free(detached);
    return rc;
}

extern "C" int pk_cuda_set_exchange(pk_cuda_session *s, int n_rank, pk_cuda_exchange_fn exchange, void *ctx)
{
    if (n_rank < 1 || !exchange) return pk_fail("CUDA exchange: %d GPUs, or no exchange", n_rank);
    const size_t states = (size_t)s->params.max_seq * s->cfg.n_head * (s->cfg.head_dim + 2) * 4;
    cudaFree(s->d_states);
    cudaFree(s->d_gathered);
    s->d_states = s->d_gathered = nullptr;
    s->n_rank = 0;
    s->exchange = nullptr;
    CU(cudaMalloc((void **)&s->d_states, states), "allocating attention states");
    CU(cudaMalloc((void **)&s->d_gathered, states * n_rank), "allocating gathered attention states");
    s->n_rank = n_rank;
    s->exchange = exchange;
    s->exchange_ctx = ctx;
    return 0;
}

/* After a multi-token call, cut every streaming head of sequence seq that
 * grew past its window back to its sinks and its last `recent` entries, which
 * stay in position order with the oldest the next to be overwritten: the
 * CPU's trim (kv/kvcache.c). The other heads keep every entry in place. */
static int trim_windows(pk_cuda_session *s, int seq)
{
    const int H = s->cfg.n_head, P = s->cfg.n_positions;
    pk_cuda_head_keep *heads = (pk_cuda_head_keep *)pk_calloc((size_t)H, sizeof *heads, "trimmed heads");
    int32_t *lists = (int32_t *)pk_malloc_array((size_t)H * P, 4, "trimmed slots");
    int rc = heads && lists ? 0 : -1;
    for (int l = 0; rc == 0 && l < s->cfg.n_layer; l++) {
        const size_t row = (size_t)seq * s->n_lh + (size_t)l * H;
        int trims = 0;
        for (int h = 0; h < H; h++) {
            const ring_state r = s->h_ring[row + h];
            const int len = s->h_len[row + h];
            int32_t *list = lists + (size_t)h * P;
            const int over = r.recent > 0 && len > r.sink + r.recent;
            const int n = over ? r.sink + r.recent : len;
            for (int j = 0; j < n; j++) list[j] = over && j >= r.sink ? len - r.recent + (j - r.sink) : j;
            heads[h] = (pk_cuda_head_keep){list, n, r.sink, r.recent, r.sink};
            trims += over;
        }
        if (trims) rc = keep_heads(s, seq, l, heads, nullptr);
    }
    pk_free(heads);
    pk_free(lists);
    return rc;
}

extern "C" size_t pk_cuda_sequence_bytes(const pk_cuda_session *s, int seq, int n_more)
{
    if (seq < 0 || seq >= s->params.max_seq) return 0;
    const int E = PK_CUDA_BLOCK;
    size_t blocks = 0;
    for (int i = 0; i < s->n_lh; i++) {
        const size_t bh = (size_t)seq * s->n_lh + i;
        const int len = entries_after(s->h_ring[bh], s->h_len[bh], n_more);
        blocks += (size_t)((len + E - 1) / E);
    }
    return blocks * s->pool.block_bytes;
}

extern "C" int pk_cuda_head_streams(const pk_cuda_session *s, int seq, int layer, int head)
{
    if (seq < 0 || seq >= s->params.max_seq || layer < 0 || layer >= s->cfg.n_layer || head < 0 ||
        head >= s->cfg.n_head)
        return 0;
    return s->h_ring[(size_t)seq * s->n_lh + layer * s->cfg.n_head + head].recent > 0;
}

extern "C" int pk_cuda_head_length(const pk_cuda_session *s, int seq, int layer, int head, int *held_blocks)
{
    if (seq < 0 || seq >= s->params.max_seq || layer < 0 || layer >= s->cfg.n_layer || head < 0 ||
        head >= s->cfg.n_head)
        return pk_fail("CUDA head length: sequence %d, layer %d, head %d out of range", seq, layer, head);
    const int lh = layer * s->cfg.n_head + head;
    if (held_blocks) *held_blocks = pk_block_pool_held(&s->pool, seq, lh);
    return s->h_len[(size_t)seq * s->n_lh + lh];
}
