#include "kv/kvcache.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

int pk_kv_init(pk_kvcache *kv, int n_layer, int n_head, int head_dim)
{
    kv->n_layer = n_layer;
    kv->n_head = n_head;
    kv->head_dim = head_dim;
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
static int head_resize(pk_kv_head *h, int cap, int head_dim)
{
    if (cap == h->cap) return 0;
    if (cap == 0) {
        head_release(h);
        return 0;
    }
    int shrinking = cap < h->cap;
    size_t row = (size_t)head_dim * sizeof(float);
    void **arrays[3] = {(void **)&h->k, (void **)&h->v, (void **)&h->pos};
    size_t sizes[3] = {(size_t)cap * row, (size_t)cap * row, (size_t)cap * sizeof(int32_t)};
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
        int need = h->len + extra;
        if (need <= h->cap) continue;
        int cap = exact ? need : (need + PK_KV_GROW - 1) / PK_KV_GROW * PK_KV_GROW;
        if (head_resize(h, cap, kv->head_dim)) return -1;
    }
    return 0;
}

int pk_kv_keep(pk_kvcache *kv, int layer, int head, const int *keep, int n_keep)
{
    pk_kv_head *h = pk_kv_at(kv, layer, head);
    size_t d = (size_t)kv->head_dim;
    for (int i = 0; i < n_keep; i++) {
        int j = keep[i];
        if (j < i || j >= h->len || (i && j <= keep[i - 1]))
            return pk_fail("KV cache: keep list for layer %d head %d is not ascending within 0..%d", layer,
                           head, h->len - 1);
        if (j == i) continue;
        memcpy(h->k + (size_t)i * d, h->k + (size_t)j * d, d * sizeof(float));
        memcpy(h->v + (size_t)i * d, h->v + (size_t)j * d, d * sizeof(float));
        h->pos[i] = h->pos[j];
    }
    h->len = n_keep;
    kv->epoch++;
    return head_resize(h, n_keep, kv->head_dim);
}

int pk_kv_truncate(pk_kvcache *kv, const int *len)
{
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) {
        pk_kv_head *h = &kv->heads[i];
        if (len[i] > h->len) return pk_fail("KV cache: cannot truncate a head of %d entries to %d", h->len, len[i]);
        h->len = len[i];
        if (head_resize(h, len[i], kv->head_dim)) return -1;
    }
    return 0;
}

size_t pk_kv_entry_bytes(const pk_kvcache *kv)
{
    return 2 * (size_t)kv->head_dim * sizeof(float) + sizeof(int32_t);
}

size_t pk_kv_bytes(const pk_kvcache *kv)
{
    size_t entries = 0;
    for (int i = 0; i < kv->n_layer * kv->n_head; i++) entries += (size_t)kv->heads[i].cap;
    return entries * pk_kv_entry_bytes(kv);
}
