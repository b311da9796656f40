/* Balanced spherical k-means: the clustering that turns a head's cached keys
 * into the experts of the moe_router press.
 *
 * Spherical: points and centroids are unit vectors and closeness is cosine
 * similarity, which is what attention cares about (a query picks keys by
 * direction more than by length). Balanced: during every assignment a cluster
 * takes at most ceil(n / k) points, so that no expert ends up owning most of
 * the cache and none stays empty while points are plenty. Deterministic: the
 * start is evenly spaced points in storage order, the number of iterations is
 * fixed, and every tie is broken by index. */
#ifndef PIKV_ROUTER_KMEANS_H
#define PIKV_ROUTER_KMEANS_H

/* The iterations the moe_router press runs (fewer when assignments settle). */
enum { PK_KMEANS_ITERATIONS = 8 };

/* One (point, cluster) affinity, as the capacity-bounded greedy consumes them. */
typedef struct {
    float affinity;
    int point, cluster;
} pk_affinity_pair;

/* Scale every row of x[n][dim] to unit length; a zero row stays zero. */
void pk_unit_rows(float *x, int n, int dim);

/* out[i][c] = a[i] · b[c] for the n rows of a and the m rows of b (dim floats
 * each): the cosines of unit rows. Plain loops: with a handful of centroids a
 * BLAS call costs more to start than to run. */
void pk_dot_rows(const float *a, int n, const float *b, int m, int dim, float *out);

/* Fill pairs[n * k] with every (point, cluster) pair of affinity[n][k], sorted
 * by decreasing affinity, then lower point, then lower cluster: the order in
 * which a greedy assignment hands out places. scratch has room for n * k
 * pairs too. */
void pk_affinity_order(const float *affinity, int n, int k, pk_affinity_pair *pairs, pk_affinity_pair *scratch);

/* Cluster n >= 1 points (rows of dim floats, unit length or zero) into k >= 1
 * balanced clusters. Starts from points floor(c * n / k), c = 0..k-1; each
 * iteration assigns points greedily by cosine similarity (pairs in
 * pk_affinity_order) to clusters with fewer than ceil(n / k) members, then
 * moves every centroid to the normalised mean of its members (a centroid
 * without members, or whose members cancel out, stays put). Stops after
 * `iterations` (>= 1), or earlier once an assignment repeats the previous one.
 * Writes centroids[k][dim] and assign[n], the last assignment (the one the
 * centroids are the means of). Returns 0, or -1 when out of memory. */
int pk_kmeans_balanced(const float *points, int n, int dim, int k, int iterations, float *centroids,
                       int *assign);

#endif
