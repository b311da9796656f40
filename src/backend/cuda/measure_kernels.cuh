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
 * as the host sums it, so that the same key gives the same float. One thread
 * per entry. */
template <typename W>
__global__ void key_norms_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, float *norms)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const W *k = kv_entry(c, b, lh, slots[j], 0);
    double sq = 0;
    for (int d = 0; d < c.head_dim; d++) {
        const double x = to_f<W>(k[d]);
        sq += x * x;
    }
    norms[j] = (float)sqrt(sq);
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

/* The listed entries' keys as float32 rows, out [n][head_dim]. One warp per
 * entry. */
template <typename W>
__global__ void gather_keys_kernel(rows_ctx<W> c, int b, int lh, const int32_t *slots, int n, float *out)
{
    const int j = blockIdx.x * MEASURE_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    const W *k = kv_entry(c, b, lh, slots[j], 0);
    for (int d = threadIdx.x & 31; d < c.head_dim; d += 32) out[(size_t)j * c.head_dim + d] = to_f<W>(k[d]);
}

} // namespace pkcuda

#endif
