/* The measures presses score from (press.h), and the host's way of computing
 * them from a view's rows and queries.
 *
 * A press that asks for these instead of reading rows itself can run where the
 * cache is not: an engine holding the cache on a device gives its views its own
 * table, and the press code is the same on both. The host's versions sum in the
 * order the presses summed before they were split out, so that a host decision
 * stays bit for bit what it was. */
#include "press/press.h"
#include "router/kmeans.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

/* Attention weights of query rows row0..row0+rows-1 over every entry of head
 * h of v: out[r][j] (0 where the entry is after the row's position). */
static void query_attention(const pk_press_view *v, int head, int row0, int rows, float *out)
{
    const int hd = v->cfg->head_dim;
    v->backend->query_weights(v->kv, pk_press_head(v, head),
                              v->q + (size_t)row0 * (size_t)v->q_stride + (size_t)head * (size_t)hd, v->q_stride,
                              rows, v->q_pos0 + row0, v->scale, out);
}

/* Sum the weights of PK_QUERY_BLOCK rows at a time, row after row for every
 * entry. */
static int host_attention_sums(void *ctx, const pk_press_view *asking, int head, int row0, int rows, double *out)
{
    (void)asking;
    const pk_press_view *v = ctx;
    const int n = pk_press_head(v, head)->len;
    const int block = rows < PK_QUERY_BLOCK ? rows : PK_QUERY_BLOCK;
    float *att = pk_malloc_array((size_t)(block > 0 ? block : 1) * (size_t)(n > 0 ? n : 1), sizeof(float),
                                 "window attention");
    if (!att) return -1;
    for (int j = 0; j < n; j++) out[j] = 0;
    for (int r0 = 0; r0 < rows; r0 += block) {
        const int m = rows - r0 < block ? rows - r0 : block;
        query_attention(v, head, row0 + r0, m, att);
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++) out[j] += att[(size_t)r * (size_t)n + (size_t)j];
    }
    pk_free(att);
    return 0;
}

static int host_key_norms(void *ctx, const pk_press_view *asking, int head, float *out)
{
    (void)asking;
    const pk_press_view *v = ctx;
    const int hd = v->cfg->head_dim, n = pk_press_head(v, head)->len;
    float *scratch = pk_press_alloc_rows(v);
    if (!scratch) return -1;
    const float *keys = pk_press_rows(v, head, 0, scratch);
    for (int j = 0; j < n; j++) {
        const float *k = keys + (size_t)j * (size_t)hd;
        double sq = 0;
        for (int d = 0; d < hd; d++) sq += (double)k[d] * k[d];
        out[j] = (float)sqrt(sq);
    }
    pk_free(scratch);
    return 0;
}

/* Mean and covariance (divided by the count) of the query rows of one head
 * from `first` on, in double. */
static void query_statistics(const pk_press_view *v, int head, int first, double *mu, double *cov)
{
    const int hd = v->cfg->head_dim, n = v->n_q - first;
    for (int a = 0; a < hd; a++) mu[a] = 0;
    for (int a = 0; a < hd * hd; a++) cov[a] = 0;
    for (int t = first; t < v->n_q; t++) {
        const float *q = v->q + (size_t)t * (size_t)v->q_stride + (size_t)head * (size_t)hd;
        for (int a = 0; a < hd; a++) mu[a] += q[a];
    }
    for (int a = 0; a < hd; a++) mu[a] /= n;
    for (int t = first; t < v->n_q; t++) {
        const float *q = v->q + (size_t)t * (size_t)v->q_stride + (size_t)head * (size_t)hd;
        for (int a = 0; a < hd; a++)
            for (int b = 0; b < hd; b++) cov[a * hd + b] += (q[a] - mu[a]) * (q[b] - mu[b]);
    }
    for (int a = 0; a < hd * hd; a++) cov[a] /= n;
}

static int host_expected_logits(void *ctx, const pk_press_view *asking, int head, int first_row, double *logit,
                                double *value_sq)
{
    (void)asking;
    const pk_press_view *v = ctx;
    const int hd = v->cfg->head_dim, n = pk_press_head(v, head)->len;
    double *mu = pk_malloc_array((size_t)hd, sizeof *mu, "expected attention statistics");
    double *cov = pk_malloc_array((size_t)hd * (size_t)hd, sizeof *cov, "expected attention statistics");
    float *scratch = pk_press_alloc_rows(v);
    int rc = mu && cov && scratch ? 0 : -1;
    if (rc == 0) {
        query_statistics(v, head, first_row, mu, cov);
        const float *keys = pk_press_rows(v, head, 0, scratch);
        for (int j = 0; j < n; j++) {
            const float *k = keys + (size_t)j * (size_t)hd;
            double lin = 0, quad = 0;
            for (int a = 0; a < hd; a++) {
                lin += k[a] * mu[a];
                double row = 0;
                for (int b = 0; b < hd; b++) row += cov[a * hd + b] * k[b];
                quad += k[a] * row;
            }
            logit[j] = lin / sqrt(hd) + quad / (2.0 * hd);
        }
        const float *values = pk_press_rows(v, head, 1, scratch); /* the keys are no longer needed */
        for (int j = 0; j < n; j++) {
            const float *val = values + (size_t)j * (size_t)hd;
            double sq = 0;
            for (int a = 0; a < hd; a++) sq += (double)val[a] * val[a];
            value_sq[j] = sq;
        }
    }
    pk_free(mu);
    pk_free(cov);
    pk_free(scratch);
    return rc;
}

/* The keys of entries[0..m-1] of head h, scaled to unit length, into a new
 * array [m][head_dim]; NULL when out of memory. */
static float *unit_keys(const pk_press_view *v, int head, const int *entries, int m)
{
    const int hd = v->cfg->head_dim;
    const pk_kv_head *kh = pk_press_head(v, head);
    float *unit = pk_malloc_array((size_t)(m > 0 ? m : 1) * (size_t)hd, sizeof *unit, "unit keys");
    if (!unit) return NULL;
    for (int i = 0; i < m; i++) pk_kv_read(v->kv, kh, 0, entries[i], 1, unit + (size_t)i * (size_t)hd);
    pk_unit_rows(unit, m, hd);
    return unit;
}

static int host_kmeans(void *ctx, const pk_press_view *asking, int head, const int *entries, int m, int k,
                       int iterations, float *centroids, int *assign)
{
    (void)asking;
    const pk_press_view *v = ctx;
    float *unit = unit_keys(v, head, entries, m);
    const int rc = unit ? pk_kmeans_balanced(unit, m, v->cfg->head_dim, k, iterations, centroids, assign) : -1;
    pk_free(unit);
    return rc;
}

static int host_key_cosines(void *ctx, const pk_press_view *asking, int head, const int *entries, int m,
                            const float *centroids, int count, float *out)
{
    (void)asking;
    const pk_press_view *v = ctx;
    float *unit = unit_keys(v, head, entries, m);
    if (!unit) return -1;
    pk_dot_rows(unit, m, centroids, count, v->cfg->head_dim, out);
    pk_free(unit);
    return 0;
}

static int host_queries(void *ctx, const pk_press_view *asking, int head, int row0, int rows, float *out)
{
    (void)asking;
    const pk_press_view *v = ctx;
    const int hd = v->cfg->head_dim;
    for (int r = 0; r < rows; r++)
        memcpy(out + (size_t)r * (size_t)hd, v->q + (size_t)(row0 + r) * (size_t)v->q_stride + (size_t)head * (size_t)hd,
               (size_t)hd * sizeof *out);
    return 0;
}

const pk_press_measures pk_press_host_measures = {.attention_sums = host_attention_sums,
                                                  .key_norms = host_key_norms,
                                                  .expected_logits = host_expected_logits,
                                                  .kmeans = host_kmeans,
                                                  .key_cosines = host_key_cosines,
                                                  .queries = host_queries};

/* The table a view's measures come from, and the context to give it. */
static const pk_press_measures *measures_of(const pk_press_view *v, void **ctx)
{
    *ctx = v->measures ? v->measures->ctx : (void *)v;
    return v->measures ? v->measures : &pk_press_host_measures;
}

int pk_press_attention_sums(const pk_press_view *v, int head, int row0, int rows, double *out)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->attention_sums) return pk_fail("press view: its measures lack attention sums");
    return m->attention_sums(ctx, v, head, row0, rows, out);
}

int pk_press_key_norms(const pk_press_view *v, int head, float *out)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->key_norms) return pk_fail("press view: its measures lack key norms");
    return m->key_norms(ctx, v, head, out);
}

int pk_press_expected_logits(const pk_press_view *v, int head, int first_row, double *logit, double *value_sq)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->expected_logits) return pk_fail("press view: its measures lack expected logits");
    return m->expected_logits(ctx, v, head, first_row, logit, value_sq);
}

int pk_press_kmeans(const pk_press_view *v, int head, const int *entries, int n, int k, int iterations,
                    float *centroids, int *assign)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->kmeans) return pk_fail("press view: its measures lack k-means");
    return m->kmeans(ctx, v, head, entries, n, k, iterations, centroids, assign);
}

int pk_press_key_cosines(const pk_press_view *v, int head, const int *entries, int n, const float *centroids,
                         int count, float *out)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->key_cosines) return pk_fail("press view: its measures lack key cosines");
    return m->key_cosines(ctx, v, head, entries, n, centroids, count, out);
}

int pk_press_queries(const pk_press_view *v, int head, int row0, int rows, float *out)
{
    void *ctx;
    const pk_press_measures *m = measures_of(v, &ctx);
    if (!m->queries) return pk_fail("press view: its measures lack queries");
    return m->queries(ctx, v, head, row0, rows, out);
}
