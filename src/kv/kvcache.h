/* The KV cache: keys and values per layer and per head, each (layer, head)
 * with its own length, so that a press can shrink one head without touching
 * the others and the memory it drops is really returned.
 *
 * Every head owns three arrays of the same capacity: K [cap, head_dim],
 * V [cap, head_dim] and pos [cap], the absolute position of each entry (the
 * index that survives compression). Attention reads entries 0..len-1 in
 * storage order; GPT-2 has no rotary embedding, so an entry's position only
 * matters to presses, never to the attention arithmetic. */
#ifndef PIKV_KV_KVCACHE_H
#define PIKV_KV_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float *k, *v;      /* [cap, head_dim] */
    int32_t *pos;      /* [cap] */
    int len, cap;
} pk_kv_head;

typedef struct {
    int n_layer, n_head, head_dim;
    pk_kv_head *heads; /* [n_layer * n_head] */
    unsigned epoch;    /* counts compactions (pk_kv_keep), so marks can tell they are stale */
} pk_kvcache;

int pk_kv_init(pk_kvcache *kv, int n_layer, int n_head, int head_dim);
void pk_kv_free(pk_kvcache *kv);
/* Drop every entry and release the memory. */
void pk_kv_clear(pk_kvcache *kv);

static inline pk_kv_head *pk_kv_at(const pk_kvcache *kv, int layer, int head)
{
    return &kv->heads[(size_t)layer * (size_t)kv->n_head + (size_t)head];
}

/* Make room for `extra` more entries in every head. With exact != 0 the
 * capacity becomes exactly what is needed (a prefill of known length);
 * otherwise it grows in steps of PK_KV_GROW entries (token-by-token decoding). */
enum { PK_KV_GROW = 64 };
int pk_kv_reserve(pk_kvcache *kv, int extra, int exact);

/* Keep only the entries listed in `keep` (ascending storage indices) of one
 * head, compacting in place and shrinking the allocation to fit. */
int pk_kv_keep(pk_kvcache *kv, int layer, int head, const int *keep, int n_keep);

/* Cut every head back to len[i] entries (never longer than it is), releasing
 * the memory past them. */
int pk_kv_truncate(pk_kvcache *kv, const int *len);

/* Bytes allocated for K, V and positions over all heads. */
size_t pk_kv_bytes(const pk_kvcache *kv);
/* Bytes per entry of one head: K + V payload and its position index. */
size_t pk_kv_entry_bytes(const pk_kvcache *kv);

#endif
