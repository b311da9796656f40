/* Query-time routing (route=1, router/route.h): each query row of a head
 * gathers only the entries it is routed to, instead of the backend's
 * attention over the whole head. On sampled positions it also measures the
 * attention mass that full attention would have put on the skipped entries.
 * CPU only. */
#include "engine/session.h"
#include "model/ops.h"
#include "router/route.h"

#include <omp.h>

double pk_route_missed_mass(const pk_kvcache *kv, const pk_kv_head *kh, const float *q, int32_t qpos, int visible,
                            const int *idx, int n, float scale, float *P)
{
    pk_key_scores(kv, kh, 0, visible, q, P);
    pk_mask_window(kh, P, 0, visible, qpos);
    pk_softmax(P, visible, scale);
    double missed = 0;
    for (int j = 0, r = 0; j < visible; j++) {
        if (r < n && idx[r] == j)
            r++;
        else
            missed += P[j];
    }
    return missed;
}

/* Rows r0..r0+rows-1 of head h. S has room for two rows of n_positions weights. */
static void routed_rows(pikv_session *s, int layer, int h, int T, int r0, int rows, float *S, int *idx)
{
    const pikv_config *c = &s->model->cfg;
    const pk_forward *f = &s->fwd;
    const int C = c->n_embd, hd = c->head_dim;
    const float scale = pk_attention_scale(c, layer);
    const pk_kv_head *kh = pk_kv_head_at(&f->kv, layer, h);
    for (int row = r0; row < r0 + rows; row++) {
        const int visible = kh->len - T + row + 1;
        const int32_t qpos = f->pos + row;
        const float *q = f->qkv + (size_t)row * 3 * (size_t)C + (size_t)h * (size_t)hd;
        float *out = f->att + (size_t)row * (size_t)C + (size_t)h * (size_t)hd;
        int n_visible;
        const int n = pk_route_select(s->routing.table, layer, h, kh, q, qpos, visible, idx, &n_visible);
        pk_gather_scores(&f->kv, kh, idx, n, q, S);
        pk_softmax(S, n, scale);
        pk_gather_weighted_sum(&f->kv, kh, idx, n, S, out);
        const double missed = pk_route_sampled(s->routing.table, qpos)
                                  ? pk_route_missed_mass(&f->kv, kh, q, qpos, visible, idx, n, scale, S + c->n_positions)
                                  : -1.0;
        pk_route_record(s->routing.table, n, n_visible, missed);
    }
}

int pk_routed_attention(pikv_session *s, int layer, int T)
{
    const pikv_config *c = &s->model->cfg;
    const int n_blocks = (T + PK_QUERY_BLOCK - 1) / PK_QUERY_BLOCK;
    const size_t score_stride = (size_t)PK_QUERY_BLOCK * (size_t)c->n_positions;
#pragma omp parallel for schedule(dynamic) num_threads(s->fwd.n_threads)
    for (int item = 0; item < c->n_head * n_blocks; item++) {
        const int h = item / n_blocks, r0 = (item % n_blocks) * PK_QUERY_BLOCK;
        const int rows = T - r0 < PK_QUERY_BLOCK ? T - r0 : PK_QUERY_BLOCK;
        const int t = omp_get_thread_num();
        routed_rows(s, layer, h, T, r0, rows, s->fwd.scores + (size_t)t * score_stride,
                    s->routing.idx + (size_t)t * (size_t)c->n_positions);
    }
    return 0;
}
