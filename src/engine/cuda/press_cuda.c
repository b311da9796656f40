/* Presses on the CUDA engine: decided on the host, from positions alone, from
 * scores computed on the device, or from a copy of the device's cache, and
 * applied on the device (see press_cuda.h). */
#include "engine/cuda/press_cuda.h"
#include "engine/compress.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

const char *pk_cuda_press_unsupported(const pk_press *p)
{
    if (p->caps & PK_PRESS_WHILE_DECODING) return "acts while decoding";
    if (p->caps & PK_PRESS_ROUTES_QUERIES) return "routes later queries through its table (route=1)";
    if (p->caps & PK_PRESS_CHUNKED_PREFILL) return "prefills in chunks (prefill_chunk)";
    if (p->caps & PK_PRESS_RECONSTRUCTION_SCORES) return "scores by reconstructing the context";
    return NULL;
}

/* Whether the press (or some part of a composition) lacks a capability. */
static int lacks(const pk_press *p, unsigned cap)
{
    if (!(p->caps & PK_PRESS_SEQUENCE)) return !(p->caps & cap);
    for (int i = 0; i < p->n_inner; i++)
        if (lacks(p->inner[i], cap)) return 1;
    return 0;
}

/* knorm on its own: the one scorer whose scores the device computes so far. */
static int scored_on_device(const pk_press *p) { return strcmp(p->name, "knorm") == 0 && !p->ops->select; }

const char *pk_cuda_press_how(pk_cuda_press_mode mode)
{
    switch (mode) {
    case PK_CUDA_FROM_POSITIONS: return "decided from positions alone, nothing copied";
    case PK_CUDA_SCORED_ON_DEVICE: return "scored on the GPU, scores copied to the host for the choice";
    default: return "scored on the host from a copy of the GPU's cache";
    }
}

pk_cuda_press_mode pk_cuda_press_mode_of(const pk_press *p)
{
    if (!lacks(p, PK_PRESS_ENTRY_FREE)) return PK_CUDA_FROM_POSITIONS;
    return scored_on_device(p) ? PK_CUDA_SCORED_ON_DEVICE : PK_CUDA_SCORED_ON_HOST;
}

/* Give every head of the host cache's layer entries 0..n-1 at positions
 * 0..n-1, with the device's keys and values when k and v (scratch
 * [n_head][n][head_dim]) are given; otherwise the rows stay unset, for a
 * press that never reads them. */
static int copy_layer_to_host(pk_cuda_session *s, int seq, int layer, int n, pk_kvcache *kv, float *k, float *v)
{
    if (k && pk_cuda_read_heads(s, seq, layer, 0, kv->n_head, n, k, v)) return -1;
    const size_t rows = (size_t)n * (size_t)kv->head_dim;
    for (int h = 0; h < kv->n_head; h++) {
        pk_kv_head *kh = pk_kv_at(kv, layer, h);
        if (k) {
            memcpy(kh->k, k + (size_t)h * rows, rows * sizeof(float));
            memcpy(kh->v, v + (size_t)h * rows, rows * sizeof(float));
        }
        for (int j = 0; j < n; j++) kh->pos[j] = j;
        kh->len = n;
    }
    return 0;
}

/* knorm's decision from key norms computed on the device: score -||k||,
 * chosen by the CPU's default selection, applied by the host cache. norms is
 * scratch [n_head][n]. */
static int select_by_device_norms(pk_cuda_session *s, int seq, const pk_press *press, const pk_press_view *v, int n,
                                  float *norms, pk_kvcache *kv, pk_keep_set *keep)
{
    float **scores = pk_press_alloc_scores(v);
    int rc = scores ? pk_cuda_key_norms(s, seq, v->layer, n, norms) : -1;
    for (int h = 0; rc == 0 && h < v->cfg->n_head; h++)
        for (int j = 0; j < n; j++) scores[h][j] = -norms[(size_t)h * n + j];
    if (rc == 0) rc = pk_keep_set_reset(keep, n) || pk_press_keep_top_at_ratio(v, scores, press->ratio, keep);
    if (rc == 0) rc = pk_kv_apply(kv, v->layer, keep);
    if (scores) pk_press_free_scores(v, scores);
    return rc;
}

/* Send what the host cache's layer kept to the device: the kept entries'
 * positions are their slots on the device, which still holds every token. */
static int apply_on_device(pk_cuda_session *s, int seq, int layer, const pk_kvcache *kv, pk_cuda_head_keep *heads)
{
    for (int h = 0; h < kv->n_head; h++) {
        const pk_kv_head *kh = pk_kv_head_at(kv, layer, h);
        if (kh->recent > 0 && !kh->evict)
            return pk_fail("layer %d head %d: a window over a full cache does not run on the GPU", layer, h);
        heads[h] = (pk_cuda_head_keep){.slots = kh->pos, .n = kh->len, .sink = kh->recent ? kh->sink : 0,
                                       .recent = kh->recent, .next = kh->ring};
    }
    return pk_cuda_keep(s, seq, layer, heads);
}

/* Decide layer by layer on the host and apply each decision on the device.
 * Only a press scored on the host gets the cache's rows; the others see a
 * host cache of positions (rows of one float, never read). */
static int compress(pk_cuda_session *s, const pikv_config *c, int seq, int n, pk_press *press, const float *queries,
                    pk_cuda_press_stats *st)
{
    pk_kvcache kv;
    pk_keep_set keep;
    memset(&keep, 0, sizeof keep);
    const int copies = st->mode == PK_CUDA_SCORED_ON_HOST;
    if (pk_kv_init(&kv, c->n_layer, c->n_head, copies ? c->head_dim : 1, PIKV_KV_F32, PIKV_KV_F32)) return -1;
    const size_t layer_floats = (size_t)c->n_head * (size_t)n * (size_t)(copies ? c->head_dim : 1);
    float *k = st->mode != PK_CUDA_FROM_POSITIONS ? pk_malloc_array(layer_floats, sizeof *k, "keys from the GPU") : NULL;
    float *v = copies ? pk_malloc_array(layer_floats, sizeof *v, "values from the GPU") : NULL;
    pk_cuda_head_keep *heads = pk_calloc((size_t)c->n_head, sizeof *heads, "kept heads");
    int rc = (k || st->mode == PK_CUDA_FROM_POSITIONS) && (v || !copies) && heads &&
                     pk_keep_set_init(&keep, c->n_head) == 0 && pk_kv_reserve(&kv, n, 1) == 0
                 ? 0
                 : -1;
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        const pk_press_view view = {.cfg = c, .layer = l, .q = queries ? queries + (size_t)l * n * c->n_embd : NULL,
                                    .q_stride = c->n_embd, .n_q = n, .q_pos0 = 0, .kv = &kv,
                                    .backend = &pk_backend_cpu, .scale = pk_attention_scale(c, l)};
        rc = copy_layer_to_host(s, seq, l, n, &kv, copies ? k : NULL, v);
        if (rc == 0 && st->mode == PK_CUDA_SCORED_ON_DEVICE) {
            rc = select_by_device_norms(s, seq, press, &view, n, k, &kv, &keep);
            st->bytes_to_host += (size_t)c->n_head * n * sizeof(float);
        } else if (rc == 0) {
            rc = pk_compress_layer(press, &view, &kv, &keep);
            if (copies) st->bytes_to_host += 2 * layer_floats * sizeof(float);
        }
        if (rc) rc = pk_fail_prefix("press '%s' at layer %d", press->name, l);
        if (rc == 0) rc = apply_on_device(s, seq, l, &kv, heads);
        for (int h = 0; h < c->n_head; h++) pk_kv_keep(&kv, l, h, NULL, 0); /* the layer's host copy is done with */
    }
    pk_keep_set_free(&keep);
    pk_kv_free(&kv);
    pk_free(k);
    pk_free(v);
    pk_free(heads);
    return rc;
}

int pk_cuda_prefill_press(pk_cuda_session *s, const pikv_model *m, int seq, const int32_t *ids, int n, pk_press *press,
                          float *logits, pk_cuda_press_stats *st)
{
    pk_cuda_press_stats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    const pikv_config *c = &m->cfg;
    if (!ids || n <= 0) return pk_fail("CUDA prefill: no prompt tokens");
    if (pk_cuda_position(s, seq) != 0)
        return pk_fail("CUDA prefill: a press compresses an empty sequence (sequence %d is at position %d)", seq,
                       pk_cuda_position(s, seq));
    if (press) {
        const char *why = pk_cuda_press_unsupported(press);
        if (why) return pk_fail("press '%s' does not run on the GPU yet: it %s", press->name, why);
        if (press->n_layer && (press->n_layer != c->n_layer || press->n_head != c->n_head))
            return pk_fail("press '%s' was made for a model of %d layers x %d heads, this one has %d x %d",
                           press->name, press->n_layer, press->n_head, c->n_layer, c->n_head);
    }
    float *queries = NULL;
    const size_t query_floats = (size_t)c->n_layer * (size_t)n * (size_t)c->n_embd;
    if (press) st->mode = pk_cuda_press_mode_of(press);
    if (press && st->mode == PK_CUDA_SCORED_ON_HOST && lacks(press, PK_PRESS_QUERY_FREE)) {
        if (!(queries = pk_malloc_array(query_floats, sizeof *queries, "queries"))) return -1;
        st->bytes_to_host += query_floats * sizeof *queries;
    }
    double t0 = pikv_now();
    int rc = queries ? pk_cuda_forward_queries(s, seq, ids, n, logits, queries)
                     : pk_cuda_forward(s, seq, ids, n, logits, 0);
    double t1 = pikv_now();
    st->prefill_s = t1 - t0;
    st->kv_bytes_before = st->kv_bytes_after = pk_cuda_sequence_bytes(s, seq, 0);
    if (rc == 0 && press) {
        rc = compress(s, c, seq, n, press, queries, st);
        st->compression_s = pikv_now() - t1;
        st->kv_bytes_after = pk_cuda_sequence_bytes(s, seq, 0);
    }
    pk_free(queries);
    return rc;
}

int pk_cuda_plan_capacity(pk_cuda_session *probe, const pikv_model *m, const int32_t *ids, int n, pk_press *press,
                          int n_gen, size_t budget, pk_cuda_capacity *out)
{
    memset(out, 0, sizeof *out);
    if (n_gen < 0) return pk_fail("capacity: %d tokens to decode", n_gen);
    pk_cuda_press_stats st;
    if (pk_cuda_truncate(probe, 0, 0) || pk_cuda_prefill_press(probe, m, 0, ids, n, press, NULL, &st)) return -1;
    if (n + n_gen > m->cfg.n_positions)
        return pk_fail("capacity: %d prompt tokens and %d to decode pass the model's %d positions", n, n_gen,
                       m->cfg.n_positions);
    pk_cuda_stats ps;
    pk_cuda_get_stats(probe, &ps);
    out->budget_bytes = budget;
    out->block_bytes = ps.block_bytes;
    out->per_seq_bytes = pk_cuda_sequence_bytes(probe, 0, n_gen);
    out->headroom_bytes = st.kv_bytes_before > out->per_seq_bytes ? st.kv_bytes_before - out->per_seq_bytes : 0;
    const size_t admitted = out->per_seq_bytes ? budget / out->per_seq_bytes : 0;
    out->admitted = admitted > 0x7fffffff ? 0x7fffffff : (int)admitted;
    return pk_cuda_truncate(probe, 0, 0);
}
