#include "kv/kvcache.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdint.h>
#include <string.h>

int pk_kv_init(pk_kvcache *kv, int n_layer, int n_head, int head_dim, pikv_kv_type type_k, pikv_kv_type type_v)
{
    memset(kv, 0, sizeof *kv);
    if (pk_kv_type_check(type_k, head_dim, "key") || pk_kv_type_check(type_v, head_dim, "value")) return -1;
    kv->n_layer = n_layer;
    kv->n_head = n_head;
    kv->head_dim = head_dim;
    kv->type_k = type_k;
    kv->type_v = type_v;
    kv->row_k = pk_kv_row_bytes(type_k, head_dim);
    kv->row_v = pk_kv_row_bytes(type_v, head_dim);
    kv->heads = pk_calloc((size_t)n_layer * (size_t)n_head, sizeof *kv->heads, "KV cache heads");
    return kv->heads ? 0 : -1;
}

static void head_release(pk_kv_head *h)
{
    pk_free(h->k);
    pk_free(h->v);
    pk_free(h->pos);
    memset(h, 0, sizeof *h);
}

void pk_kv_clear(pk_kvcache *kv)
{
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) head_release(&kv->heads[i]);
}

void pk_kv_free(pk_kvcache *kv)
{
    if (!kv->heads) return;
    pk_kv_clear(kv);
    pk_free(kv->heads);
    kv->heads = NULL;
}

/* Resize one head's three arrays to `cap` entries (which is >= len). A failed
 * growth leaves the head as it was (cap unchanged); a failed shrink keeps the
 * larger block, which is still valid, so shrinking never fails. */
static int head_resize(pk_kv_head *h, int cap, const pk_kvcache *kv)
{
    if (cap == h->cap) return 0;
    if (cap == 0) {
        head_release(h);
        return 0;
    }
    int shrinking = cap < h->cap;
    void **arrays[3] = {(void **)&h->k, (void **)&h->v, (void **)&h->pos};
    size_t sizes[3] = {(size_t)cap * kv->row_k, (size_t)cap * kv->row_v, (size_t)cap * sizeof(int32_t)};
    for (int i = 0; i < 3; i++) {
        void *p = pk_realloc(*arrays[i], sizes[i], "KV cache");
        if (p) *arrays[i] = p;
        else if (!shrinking) return -1;
    }
    h->cap = cap;
    return 0;
}

int pk_kv_reserve(pk_kvcache *kv, int extra, int exact)
{
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) {
        pk_kv_head *h = &kv->heads[i];
        int full_ring = h->evict && extra == 1 && h->len >= h->sink + h->recent;
        int need = full_ring ? h->len : h->len + extra;
        if (need <= h->cap) continue;
        int cap = exact ? need : (need + PK_KV_GROW - 1) / PK_KV_GROW * PK_KV_GROW;
        if (head_resize(h, cap, kv)) return -1;
    }
    return 0;
}

int pk_kv_keep(pk_kvcache *kv, int layer, int head, const int *keep, int n_keep)
{
    pk_kv_head *h = pk_kv_at(kv, layer, head);
    for (int i = 0; i < n_keep; i++) {
        int j = keep[i];
        if (j < i || j >= h->len || (i && j <= keep[i - 1]))
            return pk_fail("KV cache: keep list for layer %d head %d is not ascending within 0..%d", layer,
                           head, h->len - 1);
        if (j == i) continue;
        memcpy(h->k + (size_t)i * kv->row_k, h->k + (size_t)j * kv->row_k, kv->row_k);
        memcpy(h->v + (size_t)i * kv->row_v, h->v + (size_t)j * kv->row_v, kv->row_v);
        h->pos[i] = h->pos[j];
    }
    h->len = n_keep;
    kv->epoch++;
    return head_resize(h, n_keep, kv);
}

int pk_kv_append_slot(pk_kv_head *h, int n_new)
{
    if (h->evict && n_new == 1 && h->len >= h->sink + h->recent) {
        int slot = h->ring;
        h->ring = h->sink + (h->ring - h->sink + 1) % h->recent;
        return slot;
    }
    return h->len++;
}

void pk_kv_read(const pk_kvcache *kv, const pk_kv_head *h, int values, int start, int n, float *out)
{
    /* A head's rows lie one after another, and a row of a block type is whole
     * blocks, so n rows decode as one row n times as long. */
    if (n > 0) pk_kv_dequantize_row(values ? kv->type_v : kv->type_k, pk_kv_row(kv, h, values, start), out,
                                    n * kv->head_dim);
}

void pk_kv_store(const pk_kvcache *kv, pk_kv_head *h, int slot, const float *key, const float *value)
{
    pk_kv_quantize_row(kv->type_k, key, h->k + (size_t)slot * kv->row_k, kv->head_dim);
    pk_kv_quantize_row(kv->type_v, value, h->v + (size_t)slot * kv->row_v, kv->head_dim);
}

/* Move entry `from` of a head to slot `to`. */
static void move_entry(pk_kv_head *h, const pk_kvcache *kv, int to, int from)
{
    if (to == from) return;
    memmove(h->k + (size_t)to * kv->row_k, h->k + (size_t)from * kv->row_k, kv->row_k);
    memmove(h->v + (size_t)to * kv->row_v, h->v + (size_t)from * kv->row_v, kv->row_v);
    h->pos[to] = h->pos[from];
}

/* Keep a streaming head's sink slots and its `recent` latest entries, the
 * latter moved into position order behind the sinks, and shrink it to fit.
 * Selection by position: the latest entries are found by repeatedly taking
 * the largest position below the previous one, which is O(recent * len) but
 * only runs when a prefill or a multi-token call ends. */
static int trim_streaming_head(pk_kv_head *h, const pk_kvcache *kv)
{
    const int sink = h->sink < h->len ? h->sink : h->len;
    const int keep_recent = h->len - sink < h->recent ? h->len - sink : h->recent;
    if (h->len > sink + keep_recent) {
        /* Positions are distinct: the cut-off is the keep_recent-th largest. */
        int32_t above = INT32_MAX, cutoff = INT32_MIN;
        for (int r = 0; r < keep_recent; r++) {
            int32_t best = INT32_MIN;
            for (int j = sink; j < h->len; j++)
                if (h->pos[j] < above && h->pos[j] > best) best = h->pos[j];
            above = cutoff = best;
        }
        int n = sink;
        for (int j = sink; j < h->len; j++)
            if (h->pos[j] >= cutoff) move_entry(h, kv, n++, j);
        h->len = n;
    }
    /* Insertion sort of the recent slots by position (they are nearly sorted). */
    uint8_t *held = NULL; /* the entry being inserted: its key row, then its value row */
    for (int i = sink + 1; i < h->len; i++) {
        if (h->pos[i] > h->pos[i - 1]) continue;
        if (!held && !(held = pk_malloc(kv->row_k + kv->row_v, "KV ring reorder"))) return -1;
        int32_t p = h->pos[i];
        memcpy(held, h->k + (size_t)i * kv->row_k, kv->row_k);
        memcpy(held + kv->row_k, h->v + (size_t)i * kv->row_v, kv->row_v);
        int j = i;
        for (; j > sink && h->pos[j - 1] > p; j--) move_entry(h, kv, j, j - 1);
        memcpy(h->k + (size_t)j * kv->row_k, held, kv->row_k);
        memcpy(h->v + (size_t)j * kv->row_v, held + kv->row_k, kv->row_v);
        h->pos[j] = p;
    }
    pk_free(held);
    /* The oldest recent entry, once the ring is full: h->sink even while the
     * head holds fewer entries than its sinks (an empty cache shaped before a
     * chunked prefill), since it fills in position order. */
    h->ring = h->sink;
    return head_resize(h, h->len, kv);
}

int pk_kv_make_streaming(pk_kvcache *kv, int layer, int head, int sink, int recent, int evict)
{
    if (sink < 0 || recent < 1) return pk_fail("KV cache: a streaming window needs sink >= 0 and recent >= 1");
    pk_kv_head *h = pk_kv_at(kv, layer, head);
    h->sink = sink;
    h->recent = recent;
    h->evict = evict;
    h->ring = sink;
    return evict ? trim_streaming_head(h, kv) : 0;
}

int pk_kv_set_window(pk_kvcache *kv, int layer, int head, int sink, int recent)
{
    if (recent == 0) {
        pk_kv_head *h = pk_kv_at(kv, layer, head);
        h->sink = h->recent = h->evict = 0;
        return 0;
    }
    return pk_kv_make_streaming(kv, layer, head, sink, recent, 0);
}

int pk_kv_trim_streaming(pk_kvcache *kv)
{
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) {
        pk_kv_head *h = &kv->heads[i];
        if (h->evict && h->len > h->sink + h->recent && trim_streaming_head(h, kv)) return -1;
    }
    return 0;
}

void pk_kv_snapshot_free(pk_kv_snapshot *snap)
{
    for (int i = 0; snap->copies && i < snap->n_heads; i++) head_release(&snap->copies[i]);
    pk_free(snap->copies);
    pk_free(snap->len);
    memset(snap, 0, sizeof *snap);
}

/* Deep copy of one head's entries (capacity = length). */
static int copy_head(pk_kv_head *dst, const pk_kv_head *src, const pk_kvcache *kv)
{
    *dst = *src;
    dst->k = dst->v = NULL;
    dst->pos = NULL;
    dst->len = dst->cap = 0;
    if (head_resize(dst, src->len, kv)) return -1;
    memcpy(dst->k, src->k, (size_t)src->len * kv->row_k);
    memcpy(dst->v, src->v, (size_t)src->len * kv->row_v);
    memcpy(dst->pos, src->pos, (size_t)src->len * sizeof *src->pos);
    dst->len = src->len;
    return 0;
}

int pk_kv_snapshot_take(const pk_kvcache *kv, pk_kv_snapshot *snap)
{
    pk_kv_snapshot_free(snap);
    const int n = kv->n_layer * kv->n_head;
    snap->n_heads = n;
    snap->len = pk_malloc_array((size_t)n, sizeof *snap->len, "KV snapshot");
    snap->copies = pk_calloc((size_t)n, sizeof *snap->copies, "KV snapshot");
    if (!snap->len || !snap->copies) {
        pk_kv_snapshot_free(snap);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        snap->len[i] = kv->heads[i].len;
        if (kv->heads[i].evict && copy_head(&snap->copies[i], &kv->heads[i], kv)) {
            pk_kv_snapshot_free(snap);
            return -1;
        }
    }
    return 0;
}

int pk_kv_snapshot_restore(pk_kvcache *kv, const pk_kv_snapshot *snap)
{
    for (int i = 0; i < snap->n_heads; i++) {
        pk_kv_head *h = &kv->heads[i];
        const pk_kv_head *saved = &snap->copies[i];
        if (saved->evict) {
            head_release(h);
            if (copy_head(h, saved, kv)) return -1;
            continue;
        }
        if (snap->len[i] > h->len)
            return pk_fail("KV cache: cannot return a head of %d entries to %d", h->len, snap->len[i]);
        h->len = snap->len[i];
        if (head_resize(h, h->len, kv)) return -1;
    }
    return 0;
}

size_t pk_kv_entry_bytes(const pk_kvcache *kv)
{
    return kv->row_k + kv->row_v + sizeof(int32_t);
}

size_t pk_kv_bytes(const pk_kvcache *kv)
{
    size_t entries = 0;
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) entries += (size_t)kv->heads[i].cap;
    return entries * pk_kv_entry_bytes(kv);
}

int pk_keep_set_init(pk_keep_set *k, int n_head)
{
    memset(k, 0, sizeof *k);
    k->keep = pk_calloc((size_t)n_head, sizeof *k->keep, "keep lists");
    k->n_keep = pk_malloc_array((size_t)n_head, sizeof *k->n_keep, "keep lists");
    k->stream = pk_calloc((size_t)n_head, sizeof *k->stream, "keep lists");
    k->n_head = n_head;
    if (!k->keep || !k->n_keep || !k->stream) {
        pk_keep_set_free(k);
        return -1;
    }
    return pk_keep_set_reset(k, 0);
}

void pk_keep_set_free(pk_keep_set *k)
{
    for (int h = 0; k->keep && h < k->n_head; h++) pk_free(k->keep[h]);
    pk_free(k->keep);
    pk_free(k->n_keep);
    pk_free(k->stream);
    memset(k, 0, sizeof *k);
}

int pk_keep_set_reset(pk_keep_set *k, int len)
{
    if (len > k->cap) {
        for (int h = 0; h < k->n_head; h++) {
            int *grown = pk_realloc(k->keep[h], (size_t)len * sizeof *grown, "keep lists");
            if (!grown) return -1;
            k->keep[h] = grown;
        }
        k->cap = len;
    }
    for (int h = 0; h < k->n_head; h++) {
        k->n_keep[h] = -1;
        k->stream[h] = (pk_stream_shape){0, 0};
    }
    return 0;
}

int pk_kv_apply(pk_kvcache *kv, int layer, const pk_keep_set *k)
{
    for (int h = 0; h < kv->n_head; h++) {
        const pk_kv_head *kh = pk_kv_at(kv, layer, h);
        const pk_stream_shape sh = k->stream[h];
        if (sh.recent > 0) {
            /* A head already streaming in this shape and within it stays as is. */
            if (kh->evict && kh->sink == sh.sink && kh->recent == sh.recent && kh->len <= sh.sink + sh.recent)
                continue;
            if (pk_kv_make_streaming(kv, layer, h, sh.sink, sh.recent, 1)) return -1;
        } else if (k->n_keep[h] >= 0 && k->n_keep[h] < kh->len) {
            if (pk_kv_keep(kv, layer, h, k->keep[h], k->n_keep[h])) return -1;
        }
    }
    return 0;
}

int pk_kv_max_len(const pk_kvcache *kv, int layer)
{
    int max = 0;
    for (int h = 0; h < kv->n_head; h++) {
        int len = pk_kv_head_at(kv, layer, h)->len;
        max = len > max ? len : max;
    }
    return max;
}
