/* Balanced spherical k-means (see kmeans.h): cosine similarities of every
 * point to every centroid, a capacity-bounded greedy assignment, and centroids
 * that are the normalised means of their members. */
#include "router/kmeans.h"
#include "util/mem.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

void pk_unit_rows(float *x, int n, int dim)
{
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * (size_t)dim;
        double sq = 0;
        for (int d = 0; d < dim; d++) sq += (double)row[d] * row[d];
        if (sq == 0) continue;
        const float inv = (float)(1.0 / sqrt(sq));
        for (int d = 0; d < dim; d++) row[d] *= inv;
    }
}

void pk_dot_rows(const float *a, int n, const float *b, int m, int dim, float *out)
{
    for (int i = 0; i < n; i++) {
        const float *x = a + (size_t)i * (size_t)dim;
        for (int c = 0; c < m; c++) {
            const float *y = b + (size_t)c * (size_t)dim;
            float dot = 0;
            for (int d = 0; d < dim; d++) dot += x[d] * y[d];
            out[(size_t)i * (size_t)m + (size_t)c] = dot;
        }
    }
}

/* A sort key that orders affinities from the highest down: the float's bits
 * made to compare as unsigned integers, then reversed. */
static uint32_t descending_key(float affinity)
{
    uint32_t bits;
    memcpy(&bits, &affinity, sizeof bits);
    bits = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
    return ~bits;
}

/* The pairs are laid out in (point, cluster) order, and a least-significant-
 * digit radix sort (four passes of one byte) is stable, so equal affinities
 * stay in that order. */
void pk_affinity_order(const float *affinity, int n, int k, pk_affinity_pair *pairs, pk_affinity_pair *scratch)
{
    const size_t count = (size_t)n * (size_t)k;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < k; c++) {
            const size_t at = (size_t)i * (size_t)k + (size_t)c;
            pairs[at] = (pk_affinity_pair){affinity[at], i, c};
        }
    pk_affinity_pair *from = pairs, *to = scratch;
    for (int shift = 0; shift < 32; shift += 8) {
        size_t start[257] = {0};
        for (size_t p = 0; p < count; p++) start[((descending_key(from[p].affinity) >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++) start[b + 1] += start[b];
        for (size_t p = 0; p < count; p++) to[start[(descending_key(from[p].affinity) >> shift) & 0xff]++] = from[p];
        pk_affinity_pair *swap = from;
        from = to;
        to = swap;
    }
}

/* One capacity-bounded assignment: pairs in order, each unassigned point to
 * the first cluster of its pairs that still has room. Every point finds one,
 * since k clusters of ceil(n / k) places hold n points. Returns whether the
 * assignment differs from the one already in assign[]. */
static int assign_with_capacity(const pk_affinity_pair *pairs, int n, int k, int *assign, int *next, int *size)
{
    const int capacity = (n + k - 1) / k;
    for (int i = 0; i < n; i++) next[i] = -1;
    for (int c = 0; c < k; c++) size[c] = 0;
    for (size_t p = 0; p < (size_t)n * (size_t)k; p++) {
        const pk_affinity_pair *pair = &pairs[p];
        if (next[pair->point] >= 0 || size[pair->cluster] >= capacity) continue;
        next[pair->point] = pair->cluster;
        size[pair->cluster]++;
    }
    int changed = 0;
    for (int i = 0; i < n; i++) {
        changed |= assign[i] != next[i];
        assign[i] = next[i];
    }
    return changed;
}

/* Move each centroid to the normalised mean of its members; a centroid with
 * no members, or whose members sum to zero, keeps its place. */
static void update_centroids(const float *points, int n, int dim, int k, const int *assign, double *sum,
                             float *centroids)
{
    memset(sum, 0, (size_t)k * (size_t)dim * sizeof *sum);
    for (int i = 0; i < n; i++) {
        const float *x = points + (size_t)i * (size_t)dim;
        double *s = sum + (size_t)assign[i] * (size_t)dim;
        for (int d = 0; d < dim; d++) s[d] += x[d];
    }
    for (int c = 0; c < k; c++) {
        const double *s = sum + (size_t)c * (size_t)dim;
        double sq = 0;
        for (int d = 0; d < dim; d++) sq += s[d] * s[d];
        if (sq == 0) continue;
        const double inv = 1.0 / sqrt(sq);
        for (int d = 0; d < dim; d++) centroids[(size_t)c * (size_t)dim + (size_t)d] = (float)(s[d] * inv);
    }
}

int pk_kmeans_balanced(const float *points, int n, int dim, int k, int iterations, float *centroids,
                       int *assign)
{
    const size_t nk = (size_t)n * (size_t)k;
    float *similarity = pk_malloc_array(nk, sizeof *similarity, "k-means similarities");
    pk_affinity_pair *pairs = pk_malloc_array(nk, sizeof *pairs, "k-means assignment");
    pk_affinity_pair *scratch = pk_malloc_array(nk, sizeof *scratch, "k-means assignment");
    int *next = pk_malloc_array((size_t)n, sizeof *next, "k-means assignment");
    int *size = pk_malloc_array((size_t)k, sizeof *size, "k-means cluster sizes");
    double *sum = pk_malloc_array((size_t)k * (size_t)dim, sizeof *sum, "k-means centroids");
    int rc = -1;
    if (!similarity || !pairs || !scratch || !next || !size || !sum) goto done;

    for (int c = 0; c < k; c++) {
        const size_t start = (size_t)c * (size_t)n / (size_t)k;
        memcpy(centroids + (size_t)c * (size_t)dim, points + start * (size_t)dim, (size_t)dim * sizeof *centroids);
    }
    for (int i = 0; i < n; i++) assign[i] = -1;
    for (int it = 0; it < iterations; it++) {
        pk_dot_rows(points, n, centroids, k, dim, similarity);
        pk_affinity_order(similarity, n, k, pairs, scratch);
        if (!assign_with_capacity(pairs, n, k, assign, next, size)) break;
        update_centroids(points, n, dim, k, assign, sum, centroids);
    }
    rc = 0;
done:
    pk_free(similarity);
    pk_free(pairs);
    pk_free(scratch);
    pk_free(next);
    pk_free(size);
    pk_free(sum);
    return rc;
}
