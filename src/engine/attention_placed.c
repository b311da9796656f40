/* Decode attention (one new token) with the heads' caches placed on workers
 * (router/placement.h). Each worker computes, for each of its slices, the
 * partial softmax state: the largest score m, the sum l of exp(scale (s - m))
 * and the weighted values o. Per head the slices merge exactly: with M the
 * largest m, out = sum(o_i e^{scale (m_i - M)}) / sum(l_i e^{scale (m_i - M)}).
 * CPU threads stand for the workers here. */
#include "engine/session.h"
#include "model/ops.h"
#include "util/mem.h"

#include <math.h>
#include <omp.h>
#include <string.h>

int pk_placed_attention(pikv_session *s, int layer)
{
    const pikv_config *c = &s->model->cfg;
    pk_session_workers *w = &s->workers;
    const pk_forward *f = &s->fwd;
    const int hd = c->head_dim, H = c->n_head, W = w->workers;
    const float scale = pk_attention_scale(c, layer);
    for (int h = 0; h < H; h++) w->head_len[h] = pk_kv_head_at(&f->kv, layer, h)->len;
    if (pk_place_heads(w->head_len, H, W, w->policy, &w->plan)) return -1;
    w->imbalance_sum += pk_placement_imbalance(&w->plan);
    w->imbalance_steps++;
    const int stride = hd + 2;
    if (w->plan.n_items > w->cap_partials) {
        float *grown = pk_realloc(w->partials, (size_t)w->plan.n_items * (size_t)stride * sizeof(float), "partials");
        if (!grown) return -1;
        w->partials = grown;
        w->cap_partials = w->plan.n_items;
    }
#pragma omp parallel num_threads(W)
    {
        const int me = omp_get_thread_num();
        float *S = w->scores + (size_t)me * (size_t)c->n_positions;
        for (int i = w->plan.first[me]; i < w->plan.first[me + 1]; i++) {
            const pk_work_item *it = &w->plan.items[i];
            const pk_kv_head *kh = pk_kv_head_at(&f->kv, layer, it->head);
            const float *q = f->qkv + (size_t)it->head * (size_t)hd;
            float *part = w->partials + (size_t)i * (size_t)stride;
            pk_key_scores(&f->kv, kh, it->start, it->count, q, S);
            pk_mask_window(kh, S, it->start, it->count, f->pos);
            float m = S[0];
            for (int j = 1; j < it->count; j++) m = S[j] > m ? S[j] : m;
            part[0] = m;
            part[1] = pk_exp_shifted(S, it->count, scale, m);
            pk_weighted_values(&f->kv, kh, it->start, it->count, S, part + 2);
        }
    }
    for (int h = 0; h < H; h++) {
        float M = -3.4e38f;
        for (int i = 0; i < w->plan.n_items; i++)
            if (w->plan.items[i].head == h && w->partials[(size_t)i * stride] > M) M = w->partials[(size_t)i * stride];
        float *out = f->att + (size_t)h * (size_t)hd, l = 0;
        memset(out, 0, (size_t)hd * sizeof *out);
        for (int i = 0; i < w->plan.n_items; i++) {
            if (w->plan.items[i].head != h) continue;
            const float *part = w->partials + (size_t)i * stride;
            const float fac = expf(scale * (part[0] - M));
            l += part[1] * fac;
            for (int d = 0; d < hd; d++) out[d] += part[2 + d] * fac;
        }
        for (int d = 0; d < hd; d++) out[d] /= l;
    }
    return 0;
}
