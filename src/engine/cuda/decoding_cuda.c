/* A press that acts while decoding, on the CUDA engine (see decoding_cuda.h). */
#include "engine/cuda/decoding_cuda.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"

struct pk_cuda_decoding {
    pk_cuda_session *s;
    const pikv_config *c;
    int seq;
    pk_press *press;
    pk_kvcache mirror;         /* the position of every device slot; rows of the layer being decided */
    pk_keep_set keep;
    float *queries;            /* [n_positions][n_embd]: one layer's query rows of the call */
    int32_t *slots;            /* [n_head][n_positions]: the slots each head keeps */
    pk_cuda_head_keep *heads;  /* [n_head] */
};

void pk_cuda_decoding_free(pk_cuda_decoding *d)
{
    if (!d) return;
    pk_kv_free(&d->mirror);
    pk_keep_set_free(&d->keep);
    pk_free(d->queries);
    pk_free(d->slots);
    pk_free(d->heads);
    pk_free(d);
}

pk_cuda_decoding *pk_cuda_decoding_new(pk_cuda_session *s, const pikv_config *c, int seq, pk_press *press)
{
    if (!press || !(press->caps & PK_PRESS_WHILE_DECODING) || !press->ops->decides_next) {
        pk_fail("CUDA decoding: press '%s' does not act while decoding", press ? press->name : "(none)");
        return NULL;
    }
    const int pos = pk_cuda_position(s, seq);
    if (pos < 0) {
        pk_fail("CUDA decoding: no sequence %d", seq);
        return NULL;
    }
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++)
            if (pk_cuda_head_length(s, seq, l, h, NULL) != pos || pk_cuda_head_streams(s, seq, l, h)) {
                pk_fail("press '%s' attaches on the GPU to a sequence that holds every token it has seen; layer %d "
                        "head %d holds %d of %d",
                        press->name, l, h, pk_cuda_head_length(s, seq, l, h, NULL), pos);
                return NULL;
            }
    pk_cuda_decoding *d = pk_calloc(1, sizeof *d, "CUDA decoding press");
    if (!d) return NULL;
    *d = (pk_cuda_decoding){.s = s, .c = c, .seq = seq, .press = press};
    const size_t P = (size_t)c->n_positions;
    d->queries = pk_malloc_array(P * (size_t)c->n_embd, sizeof *d->queries, "queries from the GPU");
    d->slots = pk_malloc_array(P * (size_t)c->n_head, sizeof *d->slots, "kept slots");
    d->heads = pk_calloc((size_t)c->n_head, sizeof *d->heads, "kept heads");
    int rc = d->queries && d->slots && d->heads ? 0 : -1;
    if (rc == 0) rc = pk_kv_init(&d->mirror, c->n_layer, c->n_head, c->head_dim, PIKV_KV_F32, PIKV_KV_F32);
    if (rc == 0) rc = pk_keep_set_init(&d->keep, c->n_head);
    if (rc == 0) rc = pk_kv_reserve(&d->mirror, pos, 0);
    for (int i = 0; rc == 0 && i < c->n_layer * c->n_head; i++) {
        pk_kv_head *kh = &d->mirror.heads[i];
        for (int j = 0; j < pos; j++) kh->pos[j] = j;
        kh->len = pos;
    }
    if (rc) {
        pk_cuda_decoding_free(d);
        return NULL;
    }
    return d;
}

pk_press *pk_cuda_decoding_press(const pk_cuda_decoding *d) { return d->press; }

/* The device's rows of every head of the layer into the mirror, for the
 * press about to decide on them: a float32 head's rows lie one after
 * another, as pk_cuda_read_heads writes one head's. */
static int rows_to_host(pk_cuda_decoding *d, int layer, size_t *bytes_to_host)
{
    for (int h = 0; h < d->c->n_head; h++) {
        pk_kv_head *kh = pk_kv_at(&d->mirror, layer, h);
        if (!kh->len) continue;
        if (pk_cuda_read_heads(d->s, d->seq, layer, h, 1, kh->len, (float *)kh->k, (float *)kh->v)) return -1;
        *bytes_to_host += 2 * (size_t)kh->len * (size_t)d->c->head_dim * sizeof(float);
    }
    return 0;
}

/* Apply the layer's keep set to the device (the slots it keeps, which are
 * storage indices there as here) and then to the mirror. */
static int apply_keep(pk_cuda_decoding *d, int layer)
{
    const int H = d->c->n_head, P = d->c->n_positions;
    for (int h = 0; h < H; h++) {
        const int len = pk_kv_head_at(&d->mirror, layer, h)->len;
        if (d->keep.stream[h].recent > 0)
            return pk_fail("press '%s' at layer %d: a streaming window while decoding does not run on the GPU",
                           d->press->name, layer);
        int32_t *slots = d->slots + (size_t)h * (size_t)P;
        const int whole = d->keep.n_keep[h] < 0 || d->keep.n_keep[h] >= len;
        const int n = whole ? len : d->keep.n_keep[h];
        for (int i = 0; i < n; i++) slots[i] = whole ? i : d->keep.keep[h][i];
        d->heads[h] = (pk_cuda_head_keep){.slots = slots, .n = n};
    }
    if (pk_cuda_keep(d->s, d->seq, layer, d->heads)) return -1;
    return pk_kv_apply(&d->mirror, layer, &d->keep);
}

/* The call's positions appended to every head of the mirror. */
static int mirror_append(pk_cuda_decoding *d, int pos0, int n)
{
    if (pk_kv_reserve(&d->mirror, n, 0)) return -1;
    for (int i = 0; i < d->c->n_layer * d->c->n_head; i++) {
        pk_kv_head *kh = &d->mirror.heads[i];
        for (int t = 0; t < n; t++) kh->pos[pk_kv_append_slot(kh, n)] = pos0 + t;
    }
    return 0;
}

int pk_cuda_decoding_forward(pk_cuda_decoding *d, const int32_t *ids, int n, float *logits, int all_logits,
                             pk_cuda_press_stats *st)
{
    pk_cuda_press_stats local;
    if (!st) st = &local;
    const pikv_config *c = d->c;
    const int pos0 = pk_cuda_position(d->s, d->seq);
    st->mode = PK_CUDA_SCORED_ON_HOST;
    if (pk_cuda_forward_queries(d->s, d->seq, ids, n, logits, all_logits) || mirror_append(d, pos0, n)) return -1;
    const double t0 = pikv_now();
    st->kv_bytes_before += pk_cuda_sequence_bytes(d->s, d->seq, 0);
    int rc = 0;
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        const pk_press_view view = {.cfg = c, .layer = l, .q = d->queries, .q_stride = c->n_embd, .n_q = n,
                                    .q_pos0 = pos0, .kv = &d->mirror, .backend = &pk_backend_cpu,
                                    .scale = pk_attention_scale(c, l)};
        rc = pk_cuda_read_queries(d->s, l, d->queries);
        st->bytes_to_host += (size_t)n * (size_t)c->n_embd * sizeof(float);
        if (rc == 0 && d->press->ops->decides_next(d->press, l, n)) rc = rows_to_host(d, l, &st->bytes_to_host);
        if (rc == 0) rc = pk_keep_set_reset(&d->keep, pk_kv_max_len(&d->mirror, l));
        if (rc == 0) rc = d->press->ops->decode_step(d->press, &view, &d->keep);
        if (rc == 1) rc = apply_keep(d, l);
        if (rc) rc = pk_fail_prefix("press '%s' at layer %d", d->press->name, l);
    }
    st->kv_bytes_after += pk_cuda_sequence_bytes(d->s, d->seq, 0);
    st->compression_s += pikv_now() - t0;
    return rc;
}
