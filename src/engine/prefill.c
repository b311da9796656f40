/* Forward calls of a session: the plain pass (pikv_forward), and the prefill
 * with a press (pikv_prefill). The model's forward pass knows nothing of
 * presses; the session reaches in through the pass's two hooks:
 *  - attention: query-time routing (a route table) or placed workers replace
 *    the backend's attention;
 *  - after_attention: the compressing press of this call decides for the
 *    layer and the cache applies it, then an attached decoding press acts. */
#include "engine/compress.h"
#include "engine/session.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

static int session_attention(void *ctx, pk_forward *f, int layer, int T)
{
    pikv_session *s = ctx;
    if (s->presses.recording) return pk_recon_attention(s->presses.recording, f, layer, T);
    if (s->routing.table) return pk_routed_attention(s, layer, T) ? -1 : 1;
    if (T == 1 && s->workers.workers) return pk_placed_attention(s, layer) ? -1 : 1;
    return 0;
}

/* Bytes held by the heads of one layer. */
static size_t layer_bytes(const pk_kvcache *kv, int layer)
{
    size_t entries = 0;
    for (int h = 0; h < kv->n_head; h++) entries += (size_t)pk_kv_head_at(kv, layer, h)->cap;
    return entries * pk_kv_entry_bytes(kv);
}

/* Let the presses act on this layer, now that its attention has used the full
 * cache: the compressing press of this call, then an attached decoding press. */
static int session_after_attention(void *ctx, pk_forward *f, int layer, int T)
{
    pikv_session *s = ctx;
    pk_session_presses *P = &s->presses;
    /* A reconstruction's calls only record (session_attention). */
    if ((!P->compressing && !P->attached) || P->recording) return 0;
    const pikv_config *c = &s->model->cfg;
    pk_press_view view = {.cfg = c, .layer = layer, .q = f->qkv, .q_stride = 3 * c->n_embd, .n_q = T,
                          .q_pos0 = f->pos, .kv = &f->kv, .backend = f->backend,
                          .scale = pk_attention_scale(c, layer)};
    double t0 = pikv_now();
    size_t before = layer_bytes(&f->kv, layer);
    int rc = 0;
    if (P->compressing) rc = pk_compress_layer(P->compressing, &view, &f->kv, &P->keep);
    if (rc == 0 && P->attached) {
        rc = pk_keep_set_reset(&P->keep, pk_kv_max_len(&f->kv, layer));
        if (rc == 0) rc = P->attached->ops->decode_step(P->attached, &view, &P->keep);
        if (rc == 1) rc = pk_kv_apply(&f->kv, layer, &P->keep);
    }
    if (rc) {
        const pk_press *failed = P->compressing ? P->compressing : P->attached;
        return pk_fail_prefix("press '%s' at layer %d", failed->name, layer);
    }
    P->stats.kv_bytes_before += before;
    P->stats.kv_bytes_after += layer_bytes(&f->kv, layer);
    P->stats.compression_s += pikv_now() - t0;
    return 0;
}

/* Run n tokens through the session's forward pass, with its hooks. */
static int session_run(pikv_session *s, const int32_t *ids, int n)
{
    if (s->routing.table) {
        if (s->workers.workers)
            return pk_fail("query-time routing (route=1) does not run on placed workers (--workers)");
        if (pk_route_table_check(s->routing.table, &s->fwd.kv)) return -1;
    }
    const pk_forward_hooks hooks = {session_attention, session_after_attention, s};
    return pk_forward_run(&s->fwd, ids, n, &hooks);
}

int pk_forward_hidden(pikv_session *s, const int32_t *ids, int n, float *hidden)
{
    if (pk_session_cpu_only(s, "reading hidden states") || session_run(s, ids, n)) return -1;
    pk_forward_hidden_states(&s->fwd, n, hidden);
    return 0;
}

int pk_forward_windows(pikv_session *s, const int32_t *ids, int n, int window)
{
    if (pk_session_cpu_only(s, "a windowed forward pass (KVzip's reconstruction)")) return -1;
    const pk_forward_hooks hooks = {session_attention, session_after_attention, s};
    return pk_forward_run_windows(&s->fwd, ids, n, window, &hooks);
}

int pikv_forward(pikv_session *s, const int32_t *ids, int n, float *logits, int all_logits)
{
    if (!s || !ids) return pk_fail("pikv_forward: session or ids is NULL");
    if (s->device.ops)
        return s->device.ops->forward(s->device.engine, ids, n, s->presses.attached, logits, all_logits,
                                      &s->presses.stats);
    if (session_run(s, ids, n)) return -1;
    if (logits) pk_forward_logits(&s->fwd, n, logits, all_logits);
    return 0;
}

/* After a compressing prefill by a press that routes queries, read the cache
 * through its route table from now on. */
static int start_routing(pikv_session *s, pk_route_table *table)
{
    pk_session_routing *R = &s->routing;
    if (!R->idx && !(R->idx = pk_malloc_array((size_t)s->fwd.n_threads * (size_t)s->model->cfg.n_positions,
                                              sizeof *R->idx, "routed attention")))
        return -1;
    pk_route_table_seal(table, &s->fwd.kv);
    R->table = table;
    return 0;
}

/* For a chunked prefill (duo prefill_chunk), give the empty cache the shape
 * the press decides, so that streaming heads never hold more than their
 * window and one chunk. */
static int shape_empty_cache(pikv_session *s, pk_press *press)
{
    const pikv_config *c = &s->model->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        pk_press_view view = {.cfg = c, .layer = l, .kv = &s->fwd.kv, .backend = s->fwd.backend,
                              .q_pos0 = s->fwd.pos, .scale = pk_attention_scale(c, l)};
        if (pk_compress_layer(press, &view, &s->fwd.kv, &s->presses.keep)) return -1;
    }
    return 0;
}

int pikv_prefill(pikv_session *s, const int32_t *ids, int n, pikv_press *press, float *logits)
{
    if (!s || !ids) return pk_fail("pikv_prefill: session or ids is NULL");
    const int pos = pikv_session_position(s);
    if (n > s->model->cfg.n_positions - pos)
        return pk_fail("input of %d tokens at position %d exceeds the model's %d positions (n_positions)", n, pos,
                       s->model->cfg.n_positions);
    if (press && press->n_layer &&
        (press->n_layer != s->model->cfg.n_layer || press->n_head != s->model->cfg.n_head))
        return pk_fail("press '%s' was made for a model of %d layers x %d heads, the session's has %d x %d",
                       press->name, press->n_layer, press->n_head, s->model->cfg.n_layer, s->model->cfg.n_head);
    if (press && pk_session_claim(s, press)) return -1;
    if (press) s->routing.table = NULL; /* the press changes the cache; it routes it or nobody does */
    if (press && (press->caps & PK_PRESS_WHILE_DECODING)) {
        if (s->presses.attached && s->presses.attached != press)
            return pk_fail("press '%s': the session already has press '%s' attached", press->name,
                           s->presses.attached->name);
        s->presses.attached = press;
        if (!s->device.ops) return pikv_forward(s, ids, n, logits, 0);
    }
    if (s->device.ops) return s->device.ops->prefill(s->device.engine, ids, n, press, logits, &s->presses.stats);
    if (press && (press->caps & PK_PRESS_RECONSTRUCTION_SCORES))
        return pk_prefill_reconstructed(s, ids, n, press, logits);
    int chunk = n;
    if (press && (press->caps & PK_PRESS_CHUNKED_PREFILL)) {
        if (shape_empty_cache(s, press)) return -1;
        chunk = press->prefill_chunk;
    }
    s->presses.compressing = press;
    int rc = 0;
    for (int done = 0; rc == 0 && done < n; done += chunk)
        rc = pikv_forward(s, ids + done, n - done < chunk ? n - done : chunk, logits, 0);
    s->presses.compressing = NULL;
    /* Each chunk's compression saw only that chunk: "before" is what the whole
     * uncompressed cache of these tokens would have held, "after" what it holds. */
    if (rc == 0 && chunk < n) {
        s->presses.stats.kv_bytes_before = (size_t)s->fwd.kv.n_layer * (size_t)s->fwd.kv.n_head *
                                           (size_t)s->fwd.pos * pk_kv_entry_bytes(&s->fwd.kv);
        s->presses.stats.kv_bytes_after = pk_kv_bytes(&s->fwd.kv);
    }
    pk_route_table *table = press && (press->caps & PK_PRESS_ROUTES_QUERIES) ? press->ops->routing(press) : NULL;
    return rc == 0 && table ? start_routing(s, table) : rc;
}
