/* Device kernels for the press measures (press/press.h): what a press scores
 * from, computed over one head's entries where the cache is, so that only one
 * value per entry goes to the host.
 *
 * Every kernel reads a list of `n` ascending slots of one head (lh = layer *
 * n_head + head) of sequence b; a slot is also the entry's position, since a
 * press runs once, right after the prompt filled slot p with position p.
 * Queries are float32 rows of one head, row r at position qpos0 + r. */
#ifndef PIKV_BACKEND_CUDA_MEASURE_KERNELS_CUH
#define PIKV_BACKEND_CUDA_MEASURE_KERNELS_CUH

#include "backend/cuda/kernels.cuh"

namespace pkcuda {

/* Warps per block of the kernels below: a row's log-sum-exp walks all of a
 * head's entries, one dependent load after another, so it takes many warps;
 * the per-entry kernels take a few. */
enum { LSE_WARPS = 32, MEASURE_WARPS = 4 };

/* q . k over one head's dimensions, lanes striding the dimensions; every lane
 * gets the sum. */
template <typename W> __device__ __forceinline__ float warp_dot(const float *q, const W *k, int head_dim)
{
    float d = 0.f;
    for (int e = threadIdx.x & 31; e < head_dim; e += 32) d += q[e] * to_f<W>(k[e]);
    return warp_sum(d);
}

/* For each query row r (one block of LSE_WARPS warps per row): the log of
 * the sum of exp(scale * q_r . k_j) over the listed entries the row can see,
 * which turns a row's logits into its softmax weights. -inf when it sees none. */
template <typename W>
__global__ void row_logsumexp_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, const float *q,
                                     int q_stride, int32_t qpos0, float scale, float *lse)
{
    __shared__ float warp_m[LSE_WARPS], warp_l[LSE_WARPS];
    const int r = blockIdx.x, warp = threadIdx.x >> 5;
    const float *qr = q + (size_t)r * q_stride;
    float m = -INFINITY, l = 0.f;
    for (int j = warp; j < n && slots[j] <= qpos0 + r; j += LSE_WARPS) {
        const float x = scale * warp_dot(qr, kv_entry(c, b, lh, slots[j], 0), c.head_dim);
        if (x > m) {
            l = l * expf(m - x) + 1.f;
            m = x;
        } else {
            l += expf(x - m);
        }
    }
    if ((threadIdx.x & 31) == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = -INFINITY, ll = 0.f;
        for (int w = 0; w < LSE_WARPS; w++) mm = fmaxf(mm, warp_m[w]);
        for (int w = 0; w < LSE_WARPS; w++)
            if (warp_l[w] > 0.f) ll += warp_l[w] * expf(warp_m[w] - mm);
        lse[r] = ll > 0.f ? mm + logf(ll) : -INFINITY;
    }
}

/* out[j] = the sum over rows 0..rows-1 of the softmax weight row r gives
 * listed entry j (0 from rows that cannot see it), summed in double like the
 * host's measure. One warp per entry. */
template <typename W>
__global__ void attention_sums_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, const float *q,
                                      int q_stride, int32_t qpos0, int rows, float scale, const float *lse,
                                      double *out)
{
    const int j = blockIdx.x * MEASURE_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    const W *k = kv_entry(c, b, lh, slots[j], 0);
    double sum = 0;
    for (int r = 0; r < rows; r++) {
        if (slots[j] > qpos0 + r) continue;
        const float x = scale * warp_dot(q + (size_t)r * q_stride, k, c.head_dim);
        sum += (double)expf(x - lse[r]);
    }
    if ((threadIdx.x & 31) == 0) out[j] = sum;
}

/* ||k_j|| of every listed entry, summed in double dimension after dimension
 * as the host sums it, every rounding spelled out (no fused multiply-add), so
 * that the same key gives the same float. One thread per entry. */
template <typename W>
__global__ void key_norms_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, float *norms)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const W *k = kv_entry(c, b, lh, slots[j], 0);
    double sq = 0;
    for (int d = 0; d < c.head_dim; d++) {
        const double x = to_f<W>(k[d]);
        sq = __dadd_rn(sq, __dmul_rn(x, x));
    }
    norms[j] = __double2float_rn(__dsqrt_rn(sq));
}

/* The mean mu [head_dim] and covariance cov [head_dim][head_dim] (divided by
 * the count) of query rows first..n_rows-1, in double and in the host's order
 * of summation. Each block of 256 threads makes the mean (block 0 stores it)
 * and 256 entries of the covariance: grid head_dim^2 / 256 rounded up. */
__global__ void query_statistics_kernel(const float *q, int q_stride, int first, int n_rows, int head_dim, double *mu,
                                        double *cov)
{
    __shared__ double mean[128]; /* head_dim <= 128, as the engine supports */
    const int count = n_rows - first;
    for (int a = threadIdx.x; a < head_dim; a += blockDim.x) {
        double s = 0;
        for (int t = first; t < n_rows; t++) s += q[(size_t)t * q_stride + a];
        mean[a] = s / count;
        if (blockIdx.x == 0) mu[a] = mean[a];
    }
    __syncthreads();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= head_dim * head_dim) return;
    const int a = i / head_dim, bb = i % head_dim;
    double s = 0;
    for (int t = first; t < n_rows; t++)
        s += (q[(size_t)t * q_stride + a] - mean[a]) * (q[(size_t)t * q_stride + bb] - mean[bb]);
    cov[i] = s / count;
}

/* Expected attention's logit of every listed entry, k.mu / sqrt(d) + k'Sk /
 * (2d), and its value's squared norm, in double as on the host. One thread
 * per entry. */
template <typename W>
__global__ void expected_logits_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, const double *mu,
                                       const double *cov, double *logit, double *value_sq)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const int hd = c.head_dim;
    const W *k = kv_entry(c, b, lh, slots[j], 0), *v = kv_entry(c, b, lh, slots[j], 1);
    double lin = 0, quad = 0, sq = 0;
    for (int a = 0; a < hd; a++) {
        const float ka = to_f<W>(k[a]);
        lin += ka * mu[a];
        double row = 0;
        for (int e = 0; e < hd; e++) row += cov[a * hd + e] * to_f<W>(k[e]);
        quad += ka * row;
        const double va = to_f<W>(v[a]);
        sq += va * va;
    }
    logit[j] = lin / sqrt((double)hd) + quad / (2.0 * hd);
    value_sq[j] = sq;
}

/* moe_router's clustering where the keys are (router/kmeans.c computes the
 * same on the host). The keys are scaled to unit length, k-means runs in one
 * block, and the router's cosines come from the same unit keys. Every
 * operation is the host's, in the host's order, with rounding spelled out
 * (no fused multiply-adds), so that the device's centroids, clusters and
 * cosines are the host's bit for bit and a press decides the same on both. */
enum { KMEANS_THREADS = 512 };

/* Key `slot` of head lh scaled to unit length as pk_unit_rows scales it (a
 * zero key stays zero), into out[head_dim]. */
template <typename W>
__device__ void unit_key(const rows_ctx<W> &c, int b, int lh, int slot, float *out)
{
    const W *k = kv_entry(c, b, lh, slot, 0);
    double sq = 0;
    for (int d = 0; d < c.head_dim; d++) {
        const double x = to_f<W>(k[d]);
        sq = __dadd_rn(sq, __dmul_rn(x, x));
    }
    const float inv = sq == 0 ? 1.f : __double2float_rn(__ddiv_rn(1.0, __dsqrt_rn(sq)));
    for (int d = 0; d < c.head_dim; d++) out[d] = sq == 0 ? to_f<W>(k[d]) : __fmul_rn(to_f<W>(k[d]), inv);
}

/* a . b over dim floats, summed in order with every product and sum rounded:
 * pk_dot_rows's arithmetic. */
__device__ __forceinline__ float ordered_dot(const float *a, const float *b, int dim)
{
    float dot = 0.f;
    for (int d = 0; d < dim; d++) dot = __fadd_rn(dot, __fmul_rn(a[d], b[d]));
    return dot;
}

/* router/kmeans.c's sort key: the affinity's bits made to compare as unsigned
 * integers, then reversed, so that ascending keys are descending affinities. */
__device__ __forceinline__ uint32_t descending_key(float affinity)
{
    uint32_t bits = __float_as_uint(affinity);
    bits = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
    return ~bits;
}

/* Sort keys[0..count-1] (count a power of two) ascending with every thread of
 * the block (a bitonic network; the keys are distinct, so the order is the
 * host's stable one). */
__device__ void block_bitonic_sort(unsigned long long *keys, unsigned count)
{
    for (unsigned size = 2; size <= count; size <<= 1)
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned t = threadIdx.x; t < count / 2; t += blockDim.x) {
                const unsigned lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
                const bool ascending = (lo & size) == 0;
                const unsigned long long a = keys[lo], z = keys[hi];
                if ((a > z) == ascending) {
                    keys[lo] = z;
                    keys[hi] = a;
                }
            }
            __syncthreads();
        }
}

/* Device scratch of kmeans_kernel for n keys into k clusters. */
struct kmeans_scratch {
    float *unit;                  /* [n][head_dim] */
    unsigned long long *order;    /* [pow2 >= n * k], used when the sort keys do not fit shared memory */
    double *sum;                  /* [k][head_dim] */
    int *next;                    /* [n] */
};

/* The capacity-bounded greedy of router/kmeans.c over the sorted pairs, by
 * the first warp: pairs in order, each key to the first cluster of its pairs
 * with fewer than `capacity` members. 32 pairs at a time: a pair whose key is
 * taken or whose cluster is full is passed over, as the host passes it over;
 * when every other pair's cluster has room for all 32, the first of them for
 * each key is taken, all at once, which is what the host's walk gives. A
 * group where some cluster has less room is walked by one lane. Stops once
 * every key has its cluster. next[i] gets key i's cluster. */
__device__ void assign_greedily(const unsigned long long *order, unsigned pairs, int n, int k, int capacity,
                                int *size, unsigned char *taken, int *next)
{
    const int lane = threadIdx.x & 31;
    int assigned = 0;
    for (unsigned p0 = 0; p0 < pairs && assigned < n; p0 += 32) {
        const unsigned p = p0 + lane;
        const unsigned pair = p < pairs ? (unsigned)order[p] : 0u;
        const int i = (int)(pair / (unsigned)k), cluster = (int)(pair % (unsigned)k);
        const int room = p < pairs ? capacity - size[cluster] : 0;
        const int eligible = p < pairs && !taken[i] && room > 0;
        int narrow = eligible && room < 32, first = eligible;
        for (int src = 0; src < 32; src++) {
            const int other = __shfl_sync(0xffffffffu, eligible ? i : -1, src);
            if (src < lane && other == i) first = 0;
        }
        for (int o = 16; o > 0; o >>= 1) narrow |= __shfl_xor_sync(0xffffffffu, narrow, o);
        __syncwarp();
        int took = 0;
        if (!narrow) {
            if (first) {
                taken[i] = 1;
                next[i] = cluster;
                atomicAdd(&size[cluster], 1);
                took = 1;
            }
        } else if (lane == 0) {
            for (unsigned q = p0; q < p0 + 32 && q < pairs; q++) {
                const unsigned pq = (unsigned)order[q];
                const int iq = (int)(pq / (unsigned)k), cq = (int)(pq % (unsigned)k);
                if (taken[iq] || size[cq] >= capacity) continue;
                taken[iq] = 1;
                size[cq]++;
                next[iq] = cq;
                took++;
            }
        }
        for (int o = 16; o > 0; o >>= 1) took += __shfl_xor_sync(0xffffffffu, took, o);
        assigned += took;
        __syncwarp();
    }
}

/* pk_kmeans_balanced of the unit keys of the n listed entries into k
 * clusters: starts from keys floor(c * n / k); each iteration orders every
 * (key, cluster) pair by affinity, assigns keys greedily to clusters with
 * fewer than ceil(n / k) members (assign_greedily), stops when the
 * assignment repeats, and moves each centroid to the normalised mean of its
 * members. One block of KMEANS_THREADS. Dynamic shared memory: the sort keys
 * when sort_in_shared (pairs_pow2 of them), then k ints and n bytes. Writes
 * centroids [k][head_dim] and assign [n]. */
template <typename W>
__global__ void __launch_bounds__(KMEANS_THREADS)
kmeans_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, int k, int iterations, unsigned pairs_pow2,
              int sort_in_shared, kmeans_scratch sc, float *centroids, int *assign)
{
    __shared__ int changed;
    unsigned long long *order = sort_in_shared ? reinterpret_cast<unsigned long long *>(dynamic_shared()) : sc.order;
    int *size = reinterpret_cast<int *>(dynamic_shared()) + (sort_in_shared ? 2 * pairs_pow2 : 0);
    unsigned char *taken = reinterpret_cast<unsigned char *>(size + k);
    const int dim = c.head_dim, tid = threadIdx.x, threads = blockDim.x;
    const unsigned pairs = (unsigned)n * (unsigned)k;
    for (int i = tid; i < n; i += threads) {
        unit_key(c, b, lh, slots[i], sc.unit + (size_t)i * dim);
        assign[i] = -1;
    }
    __syncthreads();
    for (int q = tid; q < k * dim; q += threads) {
        const size_t start = (size_t)(q / dim) * (size_t)n / (size_t)k;
        centroids[q] = sc.unit[start * dim + q % dim];
    }
    __syncthreads();
    for (int it = 0; it < iterations; it++) {
        for (unsigned p = tid; p < pairs_pow2; p += threads) {
            if (p >= pairs) {
                order[p] = ~0ull;
                continue;
            }
            const float affinity = ordered_dot(sc.unit + (size_t)(p / k) * dim, centroids + (size_t)(p % k) * dim, dim);
            order[p] = (unsigned long long)descending_key(affinity) << 32 | p;
        }
        for (int i = tid; i < n; i += threads) taken[i] = 0;
        for (int q = tid; q < k; q += threads) size[q] = 0;
        if (tid == 0) changed = 0;
        __syncthreads();
        block_bitonic_sort(order, pairs_pow2);
        if (tid < 32) assign_greedily(order, pairs, n, k, (n + k - 1) / k, size, taken, sc.next);
        __syncthreads();
        for (int i = tid; i < n; i += threads)
            if (assign[i] != sc.next[i]) {
                changed = 1;
                assign[i] = sc.next[i];
            }
        __syncthreads();
        if (!changed) break;
        for (int q = tid; q < k * dim; q += threads) {
            const int cluster = q / dim, d = q % dim;
            double sum = 0;
            for (int i = 0; i < n; i++)
                if (assign[i] == cluster) sum = __dadd_rn(sum, (double)sc.unit[(size_t)i * dim + d]);
            sc.sum[q] = sum;
        }
        __syncthreads();
        for (int cluster = tid; cluster < k; cluster += threads) {
            const double *s = sc.sum + (size_t)cluster * dim;
            double sq = 0;
            for (int d = 0; d < dim; d++) sq = __dadd_rn(sq, __dmul_rn(s[d], s[d]));
            if (sq == 0) continue;
            const double inv = __ddiv_rn(1.0, __dsqrt_rn(sq));
            for (int d = 0; d < dim; d++) centroids[(size_t)cluster * dim + d] = __double2float_rn(__dmul_rn(s[d], inv));
        }
        __syncthreads();
    }
}

/* out[i][c] = unit key of listed entry i . centroids[c], c < count, as the
 * host computes the router's cosines. One thread per entry. */
template <typename W>
__global__ void key_cosines_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, const float *centroids,
                                   int count, float *unit_scratch, float *out)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float *unit = unit_scratch + (size_t)i * c.head_dim;
    unit_key(c, b, lh, slots[i], unit);
    for (int cl = 0; cl < count; cl++) out[(size_t)i * count + cl] = ordered_dot(unit, centroids + (size_t)cl * c.head_dim, c.head_dim);
}

} // namespace pkcuda

#endif
