/* The GPT-2 forward pass (see model/forward.h): one readable path from token
 * ids to the final residual stream, every product and kernel through the
 * backend's table. */
#include "model/forward.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

int pk_forward_init(pk_forward *f, const pikv_model *m, int n_threads, pikv_kv_type type_k, pikv_kv_type type_v)
{
    memset(f, 0, sizeof *f);
    f->model = m;
    f->backend = &pk_backend_cpu;
    f->n_threads = n_threads;
    const pikv_config *c = &m->cfg;
    f->scores = pk_malloc_array((size_t)n_threads * PK_QUERY_BLOCK * (size_t)c->n_positions, sizeof(float),
                                "attention scores");
    if (m->weights != PK_DT_F32 &&
        !(f->panels = pk_malloc_array((size_t)n_threads, PK_PANEL_FLOATS * sizeof(float), "weight panels"))) {
        pk_forward_free(f);
        return -1;
    }
    if (!f->scores || pk_kv_init(&f->kv, c->n_layer, c->n_head, c->head_dim, type_k, type_v)) {
        pk_forward_free(f);
        return -1;
    }
    if (type_k != PIKV_KV_F32 || type_v != PIKV_KV_F32) {
        f->kv_rows = pk_malloc_array((size_t)c->n_head * 2 * (size_t)c->n_positions * (size_t)c->head_dim,
                                     sizeof(float), "decoded KV rows");
        if (!f->kv_rows) {
            pk_forward_free(f);
            return -1;
        }
    }
    return 0;
}

void pk_forward_free_scratch(pk_forward *f)
{
    pk_free(f->x);
    pk_free(f->xn);
    pk_free(f->qkv);
    pk_free(f->att);
    pk_free(f->fc);
    f->x = f->xn = f->qkv = f->att = f->fc = NULL;
    f->rows = 0;
}

void pk_forward_free(pk_forward *f)
{
    pk_kv_free(&f->kv);
    pk_forward_free_scratch(f);
    pk_free(f->scores);
    pk_free(f->panels);
    pk_free(f->kv_rows);
    f->scores = f->panels = f->kv_rows = NULL;
}

/* Grow the activation buffers to hold `rows` tokens. */
static int ensure_scratch(pk_forward *f, int rows)
{
    if (rows <= f->rows) return 0;
    const pikv_config *c = &f->model->cfg;
    size_t n = (size_t)rows, C = (size_t)c->n_embd, F = (size_t)c->n_inner;
    pk_forward_free_scratch(f);
    f->x = pk_malloc_array(n * C, sizeof(float), "activations");
    f->xn = pk_malloc_array(n * C, sizeof(float), "activations");
    f->qkv = pk_malloc_array(n * 3 * C, sizeof(float), "activations");
    f->att = pk_malloc_array(n * C, sizeof(float), "activations");
    f->fc = pk_malloc_array(n * F, sizeof(float), "activations");
    if (!f->x || !f->xn || !f->qkv || !f->att || !f->fc) {
        pk_forward_free_scratch(f);
        return -1;
    }
    f->rows = rows;
    return 0;
}

/* Append the keys and values of the T new tokens (from qkv [T, 3C]) to every
 * head of one layer, in the cache's types: at the end, or for one token into a
 * full streaming head, over its oldest recent entry. Capacity was reserved by
 * the caller. */
static void append_kv(pk_forward *f, int layer, int T)
{
    const pikv_config *c = &f->model->cfg;
    size_t C = (size_t)c->n_embd, hd = (size_t)c->head_dim;
    for (int h = 0; h < c->n_head; h++) {
        pk_kv_head *kh = pk_kv_at(&f->kv, layer, h);
        for (int t = 0; t < T; t++) {
            const float *row = f->qkv + (size_t)t * 3 * C;
            int slot = pk_kv_append_slot(kh, T);
            pk_kv_store(&f->kv, kh, slot, row + C + (size_t)h * hd, row + 2 * C + (size_t)h * hd);
            kh->pos[slot] = f->pos + t;
        }
    }
}

/* y[T, out] = beta·y + x[T, in] · W + bias through the backend. */
static void matmul(const pk_forward *f, float *y, const float *x, const pk_matrix *W, const float *bias, int T, int in,
                   int out, float beta)
{
    const pk_matmul_args a = {.y = y, .x = x, .W = W, .bias = bias, .T = T, .in = in, .out = out, .beta = beta,
                              .panels = f->panels, .n_threads = f->n_threads};
    f->backend->matmul(&a);
}

pk_attention_args pk_forward_attention_args(const pk_forward *f, int layer, int T)
{
    const pikv_config *c = &f->model->cfg;
    return (pk_attention_args){.kv = &f->kv, .layer = layer, .T = T, .pos0 = f->pos, .qkv = f->qkv, .att = f->att,
                               .scale = pk_attention_scale(c, layer), .scores = f->scores, .kv_rows = f->kv_rows,
                               .n_positions = c->n_positions, .n_threads = f->n_threads, .window = f->window};
}

/* One transformer block on the T new rows of the residual stream. */
static int block_forward(pk_forward *f, int layer, int T, const pk_forward_hooks *hooks)
{
    const pikv_config *c = &f->model->cfg;
    const pk_layer *L = &f->model->layers[layer];
    const pk_backend *be = f->backend;
    const int C = c->n_embd, F = c->n_inner;

    be->layernorm(f->xn, f->x, L->ln_1_w, L->ln_1_b, T, C, c->layer_norm_epsilon, f->n_threads); /* xn [T, C] */
    matmul(f, f->qkv, f->xn, &L->attn_w, L->attn_b, T, C, 3 * C, 0.f);                          /* qkv [T, 3C] */
    if (!f->window) append_kv(f, layer, T);
    int done = hooks && hooks->attention ? hooks->attention(hooks->ctx, f, layer, T) : 0;      /* att [T, C] */
    if (done < 0) return -1;
    if (!done) {
        const pk_attention_args a = pk_forward_attention_args(f, layer, T);
        be->attention(&a);
    }
    if (hooks && hooks->after_attention && hooks->after_attention(hooks->ctx, f, layer, T)) return -1;
    /* Windows are run for what their attention shows the hooks; nothing reads
     * the last block's output. */
    if (f->window && layer == c->n_layer - 1) return 0;
    matmul(f, f->x, f->att, &L->attn_proj_w, L->attn_proj_b, T, C, C, 1.f);                     /* x += att · Wo */

    be->layernorm(f->xn, f->x, L->ln_2_w, L->ln_2_b, T, C, c->layer_norm_epsilon, f->n_threads);
    matmul(f, f->fc, f->xn, &L->fc_w, L->fc_b, T, C, F, 0.f);                                   /* fc [T, F] */
    be->gelu(f->fc, T, F, f->n_threads);
    matmul(f, f->x, f->fc, &L->fc_proj_w, L->fc_proj_b, T, F, C, 1.f);                          /* x += gelu(fc) · Wp */
    return 0;
}

/* Check n token ids against the vocabulary, and that the call's rows, which
 * reach position f->pos + span - 1, stay inside the model's positions. */
static int check_input(const pk_forward *f, const int32_t *ids, int n, int span)
{
    const pikv_config *c = &f->model->cfg;
    if (n <= 0) return pk_fail("forward: no tokens to run");
    if (span > c->n_positions - f->pos)
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", span,
                       f->pos, c->n_positions);
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab_size)
            return pk_fail("token id %d is outside the vocabulary (0..%d)", ids[t], c->vocab_size - 1);
    return 0;
}

/* Embed the n rows (x = wte[id] + wpe[pos], row t at f->pos + t % period)
 * and run every block over them. */
static int run_rows(pk_forward *f, const int32_t *ids, int n, int period, const pk_forward_hooks *hooks)
{
    const pikv_model *m = f->model;
    const int C = m->cfg.n_embd;
    f->backend->set_threads(f->n_threads);
    for (int t = 0; t < n; t++) {
        const float *pe = m->wpe + (size_t)(f->pos + t % period) * C;
        float *x = f->x + (size_t)t * C;
        pk_matrix_to_f32(&m->wte, (size_t)ids[t] * C, (size_t)C, x);
        for (int i = 0; i < C; i++) x[i] += pe[i];
    }
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (block_forward(f, l, n, hooks)) return -1;
    return 0;
}

int pk_forward_run(pk_forward *f, const int32_t *ids, int n, const pk_forward_hooks *hooks)
{
    if (check_input(f, ids, n, n) || ensure_scratch(f, n) || pk_kv_reserve(&f->kv, n, n > 1)) return -1;
    if (run_rows(f, ids, n, n, hooks)) return -1;
    if (n > 1 && pk_kv_trim_streaming(&f->kv)) return -1;
    f->pos += n;
    return 0;
}

int pk_forward_run_windows(pk_forward *f, const int32_t *ids, int n, int window, const pk_forward_hooks *hooks)
{
    if (window <= 0) return pk_fail("forward: windows of %d rows", window);
    if (check_input(f, ids, n, window < n ? window : n) || ensure_scratch(f, n)) return -1;
    f->window = window;
    const int rc = run_rows(f, ids, n, window, hooks);
    f->window = 0;
    return rc;
}

void pk_forward_hidden_states(pk_forward *f, int n, float *hidden)
{
    const pikv_config *c = &f->model->cfg;
    f->backend->layernorm(hidden, f->x, f->model->ln_f_w, f->model->ln_f_b, n, c->n_embd, c->layer_norm_epsilon,
                          f->n_threads);
}

void pk_forward_logits(pk_forward *f, int n, float *logits, int all_rows)
{
    const pikv_model *m = f->model;
    const pikv_config *c = &m->cfg;
    const int C = c->n_embd;
    /* Final norm and LM head, only for the rows whose logits are wanted. */
    int first = all_rows ? 0 : n - 1, rows = n - first;
    f->backend->layernorm(f->xn, f->x + (size_t)first * C, m->ln_f_w, m->ln_f_b, rows, C, c->layer_norm_epsilon,
                          f->n_threads);
    const pk_matmul_args head = {.y = logits, .x = f->xn, .W = &m->lm_head, .T = rows, .in = C, .out = c->vocab_size,
                                 .panels = f->panels, .n_threads = f->n_threads};
    f->backend->matmul(&head);                                                                 /* [rows, V] */
}
