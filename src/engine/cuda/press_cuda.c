/* Presses on the CUDA engine: decided on the host, from positions alone, from
 * measures computed on the device, or from a copy of the device's cache, and
 * applied on the device (see press_cuda.h). */
#include "engine/cuda/press_cuda.h"
#include "engine/compress.h"
#include "engine/session.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

const char *pk_cuda_press_unsupported(const pk_press *p)
{
    if (p->caps & PK_PRESS_WHILE_DECODING)
        return "acts while decoding: on the GPU it runs on one sequence, through a session (generate, eval, "
               "compare) or bench --batch 1, not from this prefill (a capacity run or a GPU group)";
    return NULL;
}

int pk_cuda_refuse_one_sequence(const pk_press *p, const char *where)
{
    const char *what = NULL;
    if (p && (p->caps & PK_PRESS_WHILE_DECODING)) what = "acts while decoding";
    if (p && (p->caps & PK_PRESS_ROUTES_QUERIES)) what = "routes later queries through its table (route=1)";
    if (!what) return 0;
    return pk_fail("press '%s' %s: on the GPU it runs one sequence (batch 1), through a session (generate, eval, "
                   "compare) or bench --batch 1, not %s",
                   p->name, what, where);
}

/* Whether the press (or some part of a composition) lacks a capability. */
static int lacks(const pk_press *p, unsigned cap)
{
    if (!(p->caps & PK_PRESS_SEQUENCE)) return !(p->caps & cap);
    for (int i = 0; i < p->n_inner; i++)
        if (lacks(p->inner[i], cap)) return 1;
    return 0;
}

const char *pk_cuda_press_how(pk_cuda_press_mode mode)
{
    switch (mode) {
    case PK_CUDA_FROM_POSITIONS: return "decided from positions alone, nothing copied";
    case PK_CUDA_SCORED_ON_DEVICE: return "scored from measures computed on the GPU";
    case PK_CUDA_DECIDED_BY_CPU_ENGINE:
        return "decided by the CPU engine on its own prefill of the prompt (host weights), nothing copied";
    default: return "scored on the host from a copy of the GPU's cache";
    }
}

pk_cuda_press_mode pk_cuda_press_mode_of(const pk_press *p)
{
    if (p->caps & PK_PRESS_RECONSTRUCTION_SCORES) return PK_CUDA_DECIDED_BY_CPU_ENGINE;
    if (!lacks(p, PK_PRESS_ENTRY_FREE)) return PK_CUDA_FROM_POSITIONS;
    return lacks(p, PK_PRESS_MEASURED) ? PK_CUDA_SCORED_ON_HOST : PK_CUDA_SCORED_ON_DEVICE;
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

/* The press measures of a view over a host cache of positions, computed on
 * the device from sequence seq's own entries; each counts what it copies. */
typedef struct {
    pk_cuda_session *s;
    int seq;
    size_t *bytes_to_host;
} device_measures;

static int device_attention_sums(void *ctx, const pk_press_view *v, int head, int row0, int rows, double *out)
{
    device_measures *d = ctx;
    const pk_kv_head *kh = pk_press_head(v, head);
    *d->bytes_to_host += (size_t)kh->len * sizeof *out;
    return pk_cuda_attention_sums(d->s, d->seq, v->layer, head, kh->pos, kh->len, row0, rows, v->scale, out);
}

static int device_key_norms(void *ctx, const pk_press_view *v, int head, float *out)
{
    device_measures *d = ctx;
    const pk_kv_head *kh = pk_press_head(v, head);
    *d->bytes_to_host += (size_t)kh->len * sizeof *out;
    return pk_cuda_key_norms(d->s, d->seq, v->layer, head, kh->pos, kh->len, out);
}

static int device_expected_logits(void *ctx, const pk_press_view *v, int head, int first_row, double *logit,
                                  double *value_sq)
{
    device_measures *d = ctx;
    const pk_kv_head *kh = pk_press_head(v, head);
    *d->bytes_to_host += 2 * (size_t)kh->len * sizeof *logit;
    return pk_cuda_expected_logits(d->s, d->seq, v->layer, head, kh->pos, kh->len, first_row, logit, value_sq);
}

/* The slots of entries[0..n-1] of a head: on the device a slot is the
 * entry's position. NULL (pk_fail) when out of memory. */
static int32_t *entry_slots(const pk_press_view *v, int head, const int *entries, int n)
{
    const pk_kv_head *kh = pk_press_head(v, head);
    int32_t *slots = pk_malloc_array((size_t)(n > 0 ? n : 1), sizeof *slots, "entry slots");
    if (slots)
        for (int i = 0; i < n; i++) slots[i] = kh->pos[entries[i]];
    return slots;
}

static int device_kmeans(void *ctx, const pk_press_view *v, int head, const int *entries, int n, int k,
                         int iterations, float *centroids, int *assign)
{
    device_measures *d = ctx;
    int32_t *slots = entry_slots(v, head, entries, n);
    const int rc = slots ? pk_cuda_kmeans(d->s, d->seq, v->layer, head, slots, n, k, iterations, centroids, assign)
                         : -1;
    pk_free(slots);
    *d->bytes_to_host += ((size_t)k * (size_t)v->cfg->head_dim + (size_t)n) * sizeof(float);
    return rc;
}

static int device_key_cosines(void *ctx, const pk_press_view *v, int head, const int *entries, int n,
                              const float *centroids, int count, float *out)
{
    device_measures *d = ctx;
    int32_t *slots = entry_slots(v, head, entries, n);
    const int rc = slots ? pk_cuda_key_cosines(d->s, d->seq, v->layer, head, slots, n, centroids, count, out) : -1;
    pk_free(slots);
    *d->bytes_to_host += (size_t)n * (size_t)count * sizeof *out;
    return rc;
}

static int device_queries(void *ctx, const pk_press_view *v, int head, int row0, int rows, float *out)
{
    device_measures *d = ctx;
    *d->bytes_to_host += (size_t)rows * (size_t)v->cfg->head_dim * sizeof *out;
    return pk_cuda_head_queries(d->s, v->layer, head, row0, rows, out);
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
 * Only a press scored on the host gets the cache's rows (and the prompt's
 * queries when it reads them); the others see a host cache of positions
 * (rows of one float, never read), a measured press through measures the
 * device computes. The view's query rows are the prompt's, which the device
 * kept when the press reads queries. */
static int compress(pk_cuda_session *s, const pikv_config *c, int seq, int n, pk_press *press, int reads_queries,
                    pk_cuda_press_stats *st)
{
    pk_kvcache kv;
    pk_keep_set keep;
    memset(&keep, 0, sizeof keep);
    const int copies = st->mode == PK_CUDA_SCORED_ON_HOST;
    if (pk_kv_init(&kv, c->n_layer, c->n_head, copies ? c->head_dim : 1, PIKV_KV_F32, PIKV_KV_F32)) return -1;
    const size_t layer_floats = (size_t)c->n_head * (size_t)n * (size_t)c->head_dim;
    const size_t query_floats = (size_t)n * (size_t)c->n_embd;
    float *k = copies ? pk_malloc_array(layer_floats, sizeof *k, "keys from the GPU") : NULL;
    float *v = copies ? pk_malloc_array(layer_floats, sizeof *v, "values from the GPU") : NULL;
    float *q = copies && reads_queries ? pk_malloc_array(query_floats, sizeof *q, "queries from the GPU") : NULL;
    pk_cuda_head_keep *heads = pk_calloc((size_t)c->n_head, sizeof *heads, "kept heads");
    device_measures on_device = {.s = s, .seq = seq, .bytes_to_host = &st->bytes_to_host};
    const pk_press_measures measures = {.ctx = &on_device,
                                        .attention_sums = device_attention_sums,
                                        .key_norms = device_key_norms,
                                        .expected_logits = device_expected_logits,
                                        .kmeans = device_kmeans,
                                        .key_cosines = device_key_cosines,
                                        .queries = device_queries};
    int rc = (!copies || (k && v && (q || !reads_queries))) && heads && pk_keep_set_init(&keep, c->n_head) == 0 &&
                     pk_kv_reserve(&kv, n, 1) == 0
                 ? 0
                 : -1;
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        const pk_press_view view = {.cfg = c, .layer = l, .q = q, .q_stride = c->n_embd, .n_q = n, .q_pos0 = 0,
                                    .kv = &kv, .backend = &pk_backend_cpu, .scale = pk_attention_scale(c, l),
                                    .measures = st->mode == PK_CUDA_SCORED_ON_DEVICE ? &measures : NULL};
        rc = copy_layer_to_host(s, seq, l, n, &kv, k, v);
        if (rc == 0 && copies) st->bytes_to_host += 2 * layer_floats * sizeof(float);
        if (rc == 0 && q) {
            rc = pk_cuda_read_queries(s, l, q);
            st->bytes_to_host += query_floats * sizeof *q;
        }
        if (rc == 0) rc = pk_compress_layer(press, &view, &kv, &keep);
        if (rc) rc = pk_fail_prefix("press '%s' at layer %d", press->name, l);
        if (rc == 0) rc = apply_on_device(s, seq, l, &kv, heads);
        for (int h = 0; h < c->n_head; h++) pk_kv_keep(&kv, l, h, NULL, 0); /* the layer's host copy is done with */
    }
    pk_keep_set_free(&keep);
    pk_kv_free(&kv);
    pk_free(k);
    pk_free(v);
    pk_free(q);
    pk_free(heads);
    return rc;
}

/* The press run by the CPU engine on the same prompt; each head of the
 * GPU's sequence then keeps the positions the CPU's cache kept. */
static int decide_by_cpu_engine(pk_cuda_session *s, const pikv_model *m, int seq, const int32_t *ids, int n,
                                pk_press *press)
{
    const pikv_config *c = &m->cfg;
    pikv_session *cpu = pikv_session_new(m, 0);
    pk_cuda_head_keep *heads = pk_calloc((size_t)c->n_head, sizeof *heads, "kept heads");
    int rc = cpu && heads ? pikv_prefill(cpu, ids, n, press, NULL) : -1;
    if (rc) rc = pk_fail_prefix("press '%s' on the CPU engine", press->name);
    for (int l = 0; rc == 0 && l < c->n_layer; l++) rc = apply_on_device(s, seq, l, &cpu->fwd.kv, heads);
    pikv_session_free(cpu);
    pk_free(heads);
    return rc;
}

/* DuoAttention with prefill_chunk: the press shapes the empty sequence (its
 * streaming heads become rings), then the prompt goes in prefill_chunk tokens
 * at a time. Each call shows a streaming head's rows only their window, and
 * the engine cuts the head back to it after the call, so that it never holds
 * more than sink + recent + one chunk, as on the CPU. */
static int prefill_in_chunks(pk_cuda_session *s, const pikv_config *c, int seq, const int32_t *ids, int n,
                             pk_press *press, float *logits, pk_cuda_press_stats *st)
{
    /* As on the CPU: "before" is what the uncompressed cache of the prompt would hold. */
    st->kv_bytes_before = pk_cuda_sequence_bytes(s, seq, n);
    double t0 = pikv_now();
    if (compress(s, c, seq, 0, press, 0, st)) return -1;
    double t1 = pikv_now();
    for (int done = 0; done < n; done += press->prefill_chunk) {
        const int m = n - done < press->prefill_chunk ? n - done : press->prefill_chunk;
        if (pk_cuda_forward(s, seq, ids + done, m, done + m == n ? logits : NULL, 0)) return -1;
    }
    st->compression_s = t1 - t0;
    st->prefill_s = pikv_now() - t1;
    st->kv_bytes_after = pk_cuda_sequence_bytes(s, seq, 0);
    return 0;
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
        if (why) return pk_fail("press '%s' %s", press->name, why);
        if (press->n_layer && (press->n_layer != c->n_layer || press->n_head != c->n_head))
            return pk_fail("press '%s' was made for a model of %d layers x %d heads, this one has %d x %d",
                           press->name, press->n_layer, press->n_head, c->n_layer, c->n_head);
    }
    if (press) st->mode = pk_cuda_press_mode_of(press);
    if (press && (press->caps & PK_PRESS_CHUNKED_PREFILL))
        return prefill_in_chunks(s, c, seq, ids, n, press, logits, st);
    const int reads_queries = press && (st->mode == PK_CUDA_SCORED_ON_DEVICE || st->mode == PK_CUDA_SCORED_ON_HOST) &&
                              lacks(press, PK_PRESS_QUERY_FREE);
    double t0 = pikv_now();
    int rc = reads_queries ? pk_cuda_forward_queries(s, seq, ids, n, logits, 0)
                           : pk_cuda_forward(s, seq, ids, n, logits, 0);
    double t1 = pikv_now();
    st->prefill_s = t1 - t0;
    st->kv_bytes_before = st->kv_bytes_after = pk_cuda_sequence_bytes(s, seq, 0);
    if (rc == 0 && press) {
        rc = st->mode == PK_CUDA_DECIDED_BY_CPU_ENGINE ? decide_by_cpu_engine(s, m, seq, ids, n, press)
                                                       : compress(s, c, seq, n, press, reads_queries, st);
        st->compression_s = pikv_now() - t1;
        st->kv_bytes_after = pk_cuda_sequence_bytes(s, seq, 0);
    }
    return rc;
}
