/* The GPT-2 forward pass over a session's KV cache.
 *
 * One call runs T new tokens (a prompt, a question, or one decoded token) at
 * absolute positions pos..pos+T-1. Each layer appends the new keys and values
 * to every head's cache, then the new queries attend to everything that head
 * holds: its earlier entries (possibly compressed) and the new tokens up to
 * and including their own position. */
#include "model/ops.h"
#include "model/session.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>
#include <time.h>

double pikv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void pk_session_free_scratch(pikv_session *s)
{
    pk_free(s->x);
    pk_free(s->xn);
    pk_free(s->qkv);
    pk_free(s->att);
    pk_free(s->fc);
    s->x = s->xn = s->qkv = s->att = s->fc = NULL;
    s->rows = 0;
}

/* Grow the activation buffers to hold `rows` tokens. */
static int ensure_scratch(pikv_session *s, int rows)
{
    if (rows <= s->rows) return 0;
    const pikv_config *c = &s->model->cfg;
    size_t n = (size_t)rows, C = (size_t)c->n_embd, F = (size_t)c->n_inner;
    pk_session_free_scratch(s);
    s->x = pk_malloc_array(n * C, sizeof(float), "activations");
    s->xn = pk_malloc_array(n * C, sizeof(float), "activations");
    s->qkv = pk_malloc_array(n * 3 * C, sizeof(float), "activations");
    s->att = pk_malloc_array(n * C, sizeof(float), "activations");
    s->fc = pk_malloc_array(n * F, sizeof(float), "activations");
    if (!s->x || !s->xn || !s->qkv || !s->att || !s->fc) {
        pk_session_free_scratch(s);
        return -1;
    }
    s->rows = rows;
    return 0;
}

/* y[T, out] (+)= x[T, in] · W[in, out]; beta = 1 accumulates into y (the
 * residual stream), beta = 0 overwrites. One token uses a matrix-vector product. */
static void matmul(float *y, const float *x, const float *W, int T, int in, int out, float beta)
{
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasTrans, in, out, 1.f, W, out, x, 1, beta, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, out, in, 1.f, x, in, W, out, beta, y, out);
}

/* Append the keys and values of the T new tokens (from qkv [T, 3C]) to every
 * head of one layer: at the end, or for one token into a full streaming head,
 * over its oldest recent entry. Capacity was reserved by the caller. */
static void append_kv(pikv_session *s, int layer, int T)
{
    const pikv_config *c = &s->model->cfg;
    size_t C = (size_t)c->n_embd, hd = (size_t)c->head_dim;
    for (int h = 0; h < c->n_head; h++) {
        pk_kv_head *kh = pk_kv_at(&s->kv, layer, h);
        for (int t = 0; t < T; t++) {
            const float *row = s->qkv + (size_t)t * 3 * C;
            size_t slot = (size_t)pk_kv_append_slot(kh, T);
            memcpy(kh->k + slot * hd, row + C + (size_t)h * hd, hd * sizeof(float));
            memcpy(kh->v + slot * hd, row + 2 * C + (size_t)h * hd, hd * sizeof(float));
            kh->pos[slot] = s->pos + t;
        }
    }
}

/* Entries outside a streaming head's window get a score that underflows to a
 * zero weight in the softmax (a finite value: the softmax runs with
 * -ffast-math, where infinities are not honoured). */
#define MASKED_SCORE (-1e30f)

/* Blank out the entries start..start+width-1 of a streaming head that a query
 * at qpos may not see (row[0] is entry `start`). */
static void mask_window(const pk_kv_head *kh, float *row, int start, int width, int32_t qpos)
{
    if (kh->recent == 0) return;
    for (int j = 0; j < width; j++)
        if (!pk_kv_in_window(kh, start + j, qpos)) row[j] = MASKED_SCORE;
}

static float attention_scale(const pikv_config *c, int layer)
{
    float scale = c->scale_attn_weights ? 1.f / sqrtf((float)c->head_dim) : 1.f;
    return c->scale_attn_by_inverse_layer_idx ? scale / (float)(layer + 1) : scale;
}

/* The attention mass that full attention of q over the first `visible`
 * entries puts on the entries not listed in idx (n ascending indices); P is
 * scratch for `visible` weights. */
static double missed_mass(const pk_kv_head *kh, const float *q, int hd, int32_t qpos, int visible, const int *idx,
                          int n, float scale, float *P)
{
    cblas_sgemv(CblasRowMajor, CblasNoTrans, visible, hd, 1.f, kh->k, hd, q, 1, 0.f, P, 1);
    mask_window(kh, P, 0, visible, qpos);
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

/* Attention of query rows r0..r0+rows-1 of head h through the route table
 * (route=1): each row gathers only the entries it is routed to. Rows see
 * entries as in attention(). S has room for two rows of n_positions weights. */
static void routed_attention(pikv_session *s, int layer, int h, int T, int r0, int rows, float *S, int *idx)
{
    const pikv_config *c = &s->model->cfg;
    const int C = c->n_embd, hd = c->head_dim;
    const float scale = attention_scale(c, layer);
    const pk_kv_head *kh = pk_kv_at(&s->kv, layer, h);
    for (int row = r0; row < r0 + rows; row++) {
        const int visible = kh->len - T + row + 1;
        const int32_t qpos = s->pos + row;
        const float *q = s->qkv + (size_t)row * 3 * (size_t)C + (size_t)h * (size_t)hd;
        float *out = s->att + (size_t)row * (size_t)C + (size_t)h * (size_t)hd;
        int n_visible;
        const int n = pk_route_select(s->routing, layer, h, kh, q, qpos, visible, idx, &n_visible);
        pk_gather_scores(kh->k, idx, n, q, hd, S);
        pk_softmax(S, n, scale);
        pk_gather_weighted_sum(kh->v, idx, n, S, hd, out);
        const double missed = pk_route_sampled(s->routing, qpos)
                                  ? missed_mass(kh, q, hd, qpos, visible, idx, n, scale, S + c->n_positions)
                                  : -1.0;
        pk_route_record(s->routing, n, n_visible, missed);
    }
}

/* Causal attention of the T new queries over each head's cache, written to
 * att [T, C]. Work items are (head, block of query rows). The new tokens were
 * appended in order, so new token i sees the head's old entries and new tokens
 * 0..i (one token into a full ring sees the whole ring); a streaming head
 * further limits each query to its window. A routed cache (route=1) is read
 * through its route table instead. */
static void attention(pikv_session *s, int layer, int T)
{
    const pikv_config *c = &s->model->cfg;
    const int C = c->n_embd, hd = c->head_dim, n_head = c->n_head;
    const float scale = attention_scale(c, layer);
    const int n_blocks = (T + PK_QUERY_BLOCK - 1) / PK_QUERY_BLOCK;
    const size_t score_stride = (size_t)PK_QUERY_BLOCK * (size_t)c->n_positions;

#pragma omp parallel for schedule(dynamic) num_threads(s->n_threads)
    for (int item = 0; item < n_head * n_blocks; item++) {
        const int h = item / n_blocks, r0 = (item % n_blocks) * PK_QUERY_BLOCK;
        const int rows = T - r0 < PK_QUERY_BLOCK ? T - r0 : PK_QUERY_BLOCK;
        const pk_kv_head *kh = pk_kv_at(&s->kv, layer, h);
        const int old = kh->len - T, width = old + r0 + rows;
        float *S = s->scores + (size_t)omp_get_thread_num() * score_stride;
        if (s->routing) {
            routed_attention(s, layer, h, T, r0, rows,
                             S, s->route_idx + (size_t)omp_get_thread_num() * (size_t)c->n_positions);
            continue;
        }
        const float *Q = s->qkv + (size_t)r0 * 3 * (size_t)C + (size_t)h * (size_t)hd;
        float *out = s->att + (size_t)r0 * (size_t)C + (size_t)h * (size_t)hd;
        if (rows == 1) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, width, hd, 1.f, kh->k, hd, Q, 1, 0.f, S, 1);
            mask_window(kh, S, 0, width, s->pos + r0);
            pk_softmax(S, width, scale);
            cblas_sgemv(CblasRowMajor, CblasTrans, width, hd, 1.f, kh->v, hd, S, 1, 0.f, out, 1);
            continue;
        }
        /* S[rows, width] = Q[rows, hd] · K[width, hd]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, width, hd, 1.f, Q, 3 * C, kh->k, hd, 0.f, S,
                    width);
        for (int i = 0; i < rows; i++) {
            float *row = S + (size_t)i * (size_t)width;
            int visible = old + r0 + i + 1;
            mask_window(kh, row, 0, visible, s->pos + r0 + i);
            pk_softmax(row, visible, scale);
            memset(row + visible, 0, (size_t)(width - visible) * sizeof(float));
        }
        /* out[rows, hd] = P[rows, width] · V[width, hd] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, width, 1.f, S, width, kh->v, hd, 0.f, out,
                    C);
    }
}

/* Decode attention (one new token) with the heads' caches placed on workers.
 * Each worker computes, for each of its slices, the partial softmax state: the
 * largest score m, the sum l of exp(scale (s - m)) and the weighted values o.
 * Per head the slices merge exactly: with M the largest m,
 * out = sum(o_i e^{scale (m_i - M)}) / sum(l_i e^{scale (m_i - M)}). */
static int attention_placed(pikv_session *s, int layer)
{
    const pikv_config *c = &s->model->cfg;
    const int hd = c->head_dim, H = c->n_head, W = s->workers;
    const float scale = attention_scale(c, layer);
    for (int h = 0; h < H; h++) s->head_len[h] = pk_kv_at(&s->kv, layer, h)->len;
    if (pk_place_heads(s->head_len, H, W, s->placement, &s->plan)) return -1;
    s->imbalance_sum += pk_placement_imbalance(&s->plan);
    s->imbalance_steps++;
    const int stride = hd + 2;
    if (s->plan.n_items > s->cap_partials) {
        float *grown = pk_realloc(s->partials, (size_t)s->plan.n_items * (size_t)stride * sizeof(float), "partials");
        if (!grown) return -1;
        s->partials = grown;
        s->cap_partials = s->plan.n_items;
    }
#pragma omp parallel num_threads(W)
    {
        const int w = omp_get_thread_num();
        float *S = s->worker_scores + (size_t)w * (size_t)c->n_positions;
        for (int i = s->plan.first[w]; i < s->plan.first[w + 1]; i++) {
            const pk_work_item *it = &s->plan.items[i];
            const pk_kv_head *kh = pk_kv_at(&s->kv, layer, it->head);
            const float *q = s->qkv + (size_t)it->head * (size_t)hd;
            float *part = s->partials + (size_t)i * (size_t)stride;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, it->count, hd, 1.f, kh->k + (size_t)it->start * hd, hd, q, 1,
                        0.f, S, 1);
            mask_window(kh, S, it->start, it->count, s->pos);
            float m = S[0];
            for (int j = 1; j < it->count; j++) m = S[j] > m ? S[j] : m;
            part[0] = m;
            part[1] = pk_exp_shifted(S, it->count, scale, m);
            cblas_sgemv(CblasRowMajor, CblasTrans, it->count, hd, 1.f, kh->v + (size_t)it->start * hd, hd, S, 1,
                        0.f, part + 2, 1);
        }
    }
    for (int h = 0; h < H; h++) {
        float M = -3.4e38f;
        for (int i = 0; i < s->plan.n_items; i++)
            if (s->plan.items[i].head == h && s->partials[(size_t)i * stride] > M) M = s->partials[(size_t)i * stride];
        float *out = s->att + (size_t)h * (size_t)hd, l = 0;
        memset(out, 0, (size_t)hd * sizeof *out);
        for (int i = 0; i < s->plan.n_items; i++) {
            if (s->plan.items[i].head != h) continue;
            const float *part = s->partials + (size_t)i * stride;
            const float f = expf(scale * (part[0] - M));
            l += part[1] * f;
            for (int d = 0; d < hd; d++) out[d] += part[2 + d] * f;
        }
        for (int d = 0; d < hd; d++) out[d] /= l;
    }
    return 0;
}

/* Layer norm of every row of x into out. */
static void layernorm_rows(pikv_session *s, float *out, const float *x, const float *w, const float *b, int T)
{
    const int C = s->model->cfg.n_embd;
    const float eps = s->model->cfg.layer_norm_epsilon;
#pragma omp parallel for num_threads(s->n_threads) if (T > 1)
    for (int t = 0; t < T; t++) pk_layernorm(out + (size_t)t * C, x + (size_t)t * C, w, b, C, eps);
}

/* Bytes held by the heads of one layer. */
static size_t layer_bytes(const pikv_session *s, int layer)
{
    size_t entries = 0;
    for (int h = 0; h < s->kv.n_head; h++) entries += (size_t)pk_kv_at(&s->kv, layer, h)->cap;
    return entries * pk_kv_entry_bytes(&s->kv);
}

/* Let the presses act on this layer, now that its attention has used the full
 * cache: the compressing press of this call, then an attached decoding press. */
static int run_presses(pikv_session *s, int layer, int T)
{
    const pikv_config *c = &s->model->cfg;
    pk_press_view view = {.cfg = c, .layer = layer, .q = s->qkv, .q_stride = 3 * c->n_embd, .n_q = T,
                          .q_pos0 = s->pos, .kv = &s->kv, .scale = attention_scale(c, layer)};
    double t0 = pikv_now();
    size_t before = layer_bytes(s, layer);
    int rc = 0;
    if (s->compressing) rc = pk_press_compress(s->compressing, &view);
    if (rc == 0 && s->attached) rc = s->attached->ops->after_call(s->attached, &view);
    s->stats.kv_bytes_before += before;
    s->stats.kv_bytes_after += layer_bytes(s, layer);
    s->stats.compression_s += pikv_now() - t0;
    return rc;
}

/* One transformer block on the T new rows of the residual stream. */
static int block_forward(pikv_session *s, int layer, int T)
{
    const pikv_config *c = &s->model->cfg;
    const pk_layer *L = &s->model->layers[layer];
    const int C = c->n_embd, F = c->n_inner;

    layernorm_rows(s, s->xn, s->x, L->ln_1_w, L->ln_1_b, T);     /* xn [T, C] */
    matmul(s->qkv, s->xn, L->attn_w, T, C, 3 * C, 0.f);           /* qkv [T, 3C] */
    pk_add_bias(s->qkv, L->attn_b, T, 3 * C);
    append_kv(s, layer, T);
    if (T == 1 && s->workers) {                                    /* att [T, C] */
        if (attention_placed(s, layer)) return -1;
    } else {
        attention(s, layer, T);
    }
    if ((s->compressing || s->attached) && run_presses(s, layer, T)) return -1;
    pk_add_bias(s->x, L->attn_proj_b, T, C);
    matmul(s->x, s->att, L->attn_proj_w, T, C, C, 1.f);           /* x += att · Wo */

    layernorm_rows(s, s->xn, s->x, L->ln_2_w, L->ln_2_b, T);
    matmul(s->fc, s->xn, L->fc_w, T, C, F, 0.f);                  /* fc [T, F] */
    pk_add_bias(s->fc, L->fc_b, T, F);
#pragma omp parallel for num_threads(s->n_threads) if (T > 1)
    for (int t = 0; t < T; t++) pk_gelu(s->fc + (size_t)t * F, (size_t)F);
    pk_add_bias(s->x, L->fc_proj_b, T, C);
    matmul(s->x, s->fc, L->fc_proj_w, T, F, C, 1.f);              /* x += gelu(fc) · Wp */
    return 0;
}

/* Run n tokens through every block, leaving the final residual stream in s->x. */
static int forward_blocks(pikv_session *s, const int32_t *ids, int n)
{
    const pikv_model *m = s->model;
    const pikv_config *c = &m->cfg;
    const int C = c->n_embd, V = c->vocab_size;
    if (n <= 0) return pk_fail("forward: no tokens to run");
    if (s->pos + n > c->n_positions)
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", n,
                       s->pos, c->n_positions);
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= V) return pk_fail("token id %d is outside the vocabulary (0..%d)", ids[t], V - 1);
    if (s->routing) {
        if (s->workers) return pk_fail("query-time routing (route=1) does not run on placed workers (--workers)");
        if (pk_route_table_check(s->routing, &s->kv)) return -1;
    }
    if (ensure_scratch(s, n) || pk_kv_reserve(&s->kv, n, n > 1)) return -1;
    openblas_set_num_threads(s->n_threads);

    for (int t = 0; t < n; t++) { /* x = wte[id] + wpe[pos] */
        const float *te = m->wte + (size_t)ids[t] * C, *pe = m->wpe + (size_t)(s->pos + t) * C;
        float *x = s->x + (size_t)t * C;
        for (int i = 0; i < C; i++) x[i] = te[i] + pe[i];
    }
    for (int l = 0; l < c->n_layer; l++)
        if (block_forward(s, l, n)) return pk_fail_prefix("press '%s' at layer %d",
                                                          (s->compressing ? s->compressing : s->attached)->name, l);
    if (n > 1 && pk_kv_trim_streaming(&s->kv)) return -1;
    s->pos += n;
    return 0;
}

int pk_forward_hidden(pikv_session *s, const int32_t *ids, int n, float *hidden)
{
    if (forward_blocks(s, ids, n)) return -1;
    layernorm_rows(s, hidden, s->x, s->model->ln_f_w, s->model->ln_f_b, n);
    return 0;
}

int pikv_forward(pikv_session *s, const int32_t *ids, int n, float *logits, int all_logits)
{
    if (!s || !ids) return pk_fail("pikv_forward: session or ids is NULL");
    if (n > s->model->cfg.n_positions - s->pos) /* before s->pos + n can overflow */
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", n, s->pos,
                       s->model->cfg.n_positions);
    const pikv_model *m = s->model;
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    if (forward_blocks(s, ids, n)) return -1;
    if (!logits) return 0;

    /* Final norm and LM head, only for the rows whose logits are wanted. */
    int first = all_logits ? 0 : n - 1, rows = n - first;
    layernorm_rows(s, s->xn, s->x + (size_t)first * C, m->ln_f_w, m->ln_f_b, rows);
    if (rows == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.f, m->lm_head, C, s->xn, 1, 0.f, logits, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.f, s->xn, C, m->lm_head, C, 0.f, logits,
                    V);
    return 0;
}

/* After a compressing prefill by a press that routes queries, read the cache
 * through its route table from now on. */
static int start_routing(pikv_session *s, pk_route_table *table)
{
    if (!s->route_idx &&
        !(s->route_idx = pk_malloc_array((size_t)s->n_threads * (size_t)s->model->cfg.n_positions,
                                         sizeof *s->route_idx, "routed attention")))
        return -1;
    s->routing = table;
    return 0;
}

int pikv_prefill(pikv_session *s, const int32_t *ids, int n, pikv_press *press, float *logits)
{
    if (!s || !ids) return pk_fail("pikv_prefill: session or ids is NULL");
    if (n > s->model->cfg.n_positions - s->pos)
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", n, s->pos,
                       s->model->cfg.n_positions);
    if (press) s->routing = NULL; /* the press changes the cache; it routes it or nobody does */
    if (press && press->ops->after_call) {
        if (s->attached && s->attached != press)
            return pk_fail("press '%s': the session already has press '%s' attached", press->name, s->attached->name);
        s->attached = press;
        return pikv_forward(s, ids, n, logits, 0);
    }
    int chunk = press && press->ops->begin_prefill ? press->ops->begin_prefill(press, &s->kv) : 0;
    if (chunk < 0) return -1;
    if (chunk == 0) chunk = n;
    s->compressing = press;
    int rc = 0;
    for (int done = 0; rc == 0 && done < n; done += chunk)
        rc = pikv_forward(s, ids + done, n - done < chunk ? n - done : chunk, logits, 0);
    s->compressing = NULL;
    pk_route_table *table = press && press->ops->routing ? press->ops->routing(press) : NULL;
    return rc == 0 && table ? start_routing(s, table) : rc;
}
