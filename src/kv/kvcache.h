/* The KV cache: keys and values per layer and per head, each (layer, head)
 * with its own length, so that a press can shrink one head without touching
 * the others and the memory it drops is really returned.
 *
 * Every head owns three arrays of the same capacity: K [cap, head_dim],
 * V [cap, head_dim] and pos [cap], the absolute position of each entry (the
 * index that survives compression). Attention reads entries 0..len-1 in
 * storage order; GPT-2 has no rotary embedding, so an entry's position only
 * matters to presses and attention windows, never to the arithmetic.
 *
 * A *streaming* head (DuoAttention) attends only to its sinks (the entries in
 * storage slots 0..sink-1, the earliest positions it holds) and to the last
 * `recent` positions. With `evict` set it also stores only those: once it holds
 * sink + recent entries, a decoded token overwrites the oldest recent one in
 * place (a ring over slots sink..sink+recent-1), and after a multi-token call,
 * which appends normally so that every new query sees its own window, the head
 * is trimmed back. Without `evict` the window is only a mask over a full cache
 * (used to measure what streaming would cost a head). */
#ifndef PIKV_KV_KVCACHE_H
#define PIKV_KV_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float *k, *v;      /* [cap, head_dim] */
    int32_t *pos;      /* [cap] */
    int len, cap;
    int sink, recent;  /* streaming window; recent == 0 for a full head */
    int evict;         /* streaming storage: ring + trim, not just a mask */
    int ring;          /* the slot the next decoded token overwrites, once full */
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

static inline pk_kv_head *pk_kv_at(pk_kvcache *kv, int layer, int head)
{
    return &kv->heads[(size_t)layer * (size_t)kv->n_head + (size_t)head];
}

/* A head to read. */
static inline const pk_kv_head *pk_kv_head_at(const pk_kvcache *kv, int layer, int head)
{
    return &kv->heads[(size_t)layer * (size_t)kv->n_head + (size_t)head];
}

/* Make room for `extra` more entries in every head. With exact != 0 the
 * capacity becomes exactly what is needed (a prefill of known length);
 * otherwise it grows in steps of PK_KV_GROW entries (token-by-token decoding).
 * A full evicting streaming head needs no room for a single token. */
enum { PK_KV_GROW = 64 };
int pk_kv_reserve(pk_kvcache *kv, int extra, int exact);

/* Keep only the entries listed in `keep` (ascending storage indices) of one
 * head, compacting in place and shrinking the allocation to fit. */
int pk_kv_keep(pk_kvcache *kv, int layer, int head, const int *keep, int n_keep);

/* The slot where the next token of a call of `n_new` tokens goes in this head:
 * the end, or (one token into a full evicting streaming head) the ring slot.
 * Updates len and the ring. */
int pk_kv_append_slot(pk_kv_head *h, int n_new);

/* Whether entry j of a head is inside the attention window of a query at
 * position qpos (always true for full heads; causality is the caller's). */
static inline int pk_kv_in_window(const pk_kv_head *h, int j, int32_t qpos)
{
    return h->recent == 0 || j < h->sink || h->pos[j] > qpos - h->recent;
}

/* Make one head streaming with the given window. With evict, keep only its
 * `sink` earliest and `recent` latest entries (recent ones in position order)
 * and return the rest of its memory. */
int pk_kv_make_streaming(pk_kvcache *kv, int layer, int head, int sink, int recent, int evict);
/* Limit one head's attention to a streaming window as a mask only, keeping
 * every entry (recent = 0 lifts the window again). */
int pk_kv_set_window(pk_kvcache *kv, int layer, int head, int sink, int recent);
/* Trim every evicting streaming head that a multi-token call left over size. */
int pk_kv_trim_streaming(pk_kvcache *kv);

/* What a press decided for one layer, for pk_kv_apply: per head, the storage
 * indices of the entries that stay (ascending; n_keep[h] < 0 keeps the head
 * whole), or a streaming shape (DuoAttention: recent > 0 keeps the sinks and
 * the recent window, which then rolls in place). The cache is the only thing
 * that changes the cache: presses fill one of these and the engine applies it. */
typedef struct {
    int sink, recent;
} pk_stream_shape;

typedef struct {
    int n_head, cap;         /* cap: room for indices per head */
    int **keep;              /* [n_head][cap] */
    int *n_keep;             /* [n_head] */
    pk_stream_shape *stream; /* [n_head] */
} pk_keep_set;

int pk_keep_set_init(pk_keep_set *k, int n_head);
void pk_keep_set_free(pk_keep_set *k);
/* Room for `len` indices per head, and every head back to "keep whole". */
int pk_keep_set_reset(pk_keep_set *k, int len);

/* Apply a layer's keep set: drop what it does not keep (returning the memory)
 * and make its streaming heads stream. */
int pk_kv_apply(pk_kvcache *kv, int layer, const pk_keep_set *k);

/* The most entries any head of the layer holds. */
int pk_kv_max_len(const pk_kvcache *kv, int layer);

/* The state of a cache to come back to: every head's length, and a copy of
 * every evicting streaming head (whose ring later tokens overwrite). */
typedef struct {
    int n_heads;
    int *len;            /* [n_heads] */
    pk_kv_head *copies;  /* [n_heads]; zeroed for heads that are not copied */
} pk_kv_snapshot;

int pk_kv_snapshot_take(const pk_kvcache *kv, pk_kv_snapshot *snap);
/* Return to the snapshot, dropping what was appended since and its memory. */
int pk_kv_snapshot_restore(pk_kvcache *kv, const pk_kv_snapshot *snap);
void pk_kv_snapshot_free(pk_kv_snapshot *snap);

/* Bytes allocated for K, V and positions over all heads. */
size_t pk_kv_bytes(const pk_kvcache *kv);
/* Bytes per entry of one head: K + V payload and its position index. */
size_t pk_kv_entry_bytes(const pk_kvcache *kv);

#endif
