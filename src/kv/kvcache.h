/* The KV cache: keys and values per layer and per head, each (layer, head)
 * with its own length, so that a press can shrink one head without touching
 * the others and the memory it drops is really returned.
 *
 * Every head owns three arrays of the same capacity: K [cap] rows, V [cap]
 * rows and pos [cap], the absolute position of each entry (the index that
 * survives compression). A row holds head_dim values in the cache's key or
 * value type (kv/kv_type.h: f32, f16, bf16, q8_0, q4_0), which may differ;
 * whatever moves entries moves whole stored rows, and readers get the floats a
 * row decodes to through pk_kv_rows / pk_kv_read. Attention reads entries 0..len-1 in
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

#include "kv/kv_type.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *k, *v;    /* [cap] rows of row_k / row_v bytes */
    int32_t *pos;      /* [cap] */
    int len, cap;
    int sink, recent;  /* streaming window; recent == 0 for a full head */
    int evict;         /* streaming storage: ring + trim, not just a mask */
    int ring;          /* the slot the next decoded token overwrites, once full */
} pk_kv_head;

typedef struct {
    int n_layer, n_head, head_dim;
    pikv_kv_type type_k, type_v;
    size_t row_k, row_v; /* bytes of one stored key / value row */
    pk_kv_head *heads; /* [n_layer * n_head] */
    unsigned epoch;    /* counts compactions (pk_kv_keep), so marks can tell they are stale */
} pk_kvcache;

/* An empty cache whose keys and values are stored in the given types (fails
 * for a block type and a head_dim that is not a multiple of 32). */
int pk_kv_init(pk_kvcache *kv, int n_layer, int n_head, int head_dim, pikv_kv_type type_k, pikv_kv_type type_v);
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

/* Stored row j of a head's keys (values != 0: values), for the codec's dot
 * and axpy. */
static inline const uint8_t *pk_kv_row(const pk_kvcache *kv, const pk_kv_head *h, int values, int j)
{
    return values ? h->v + (size_t)j * kv->row_v : h->k + (size_t)j * kv->row_k;
}

/* Whether keys (values != 0: values) are stored as float32, so that their rows
 * can be read in place. */
static inline int pk_kv_is_f32(const pk_kvcache *kv, int values)
{
    return (values ? kv->type_v : kv->type_k) == PIKV_KV_F32;
}

/* Write entries start..start+n-1 of a head's keys (values != 0: values) as
 * floats into out [n, head_dim]: what attention and presses see. */
void pk_kv_read(const pk_kvcache *kv, const pk_kv_head *h, int values, int start, int n, float *out);

/* A head's keys (values != 0: values) in place, when they are stored as f32. */
static inline const float *pk_kv_f32_rows(const pk_kv_head *h, int values)
{
    return (const float *)(const void *)(values ? h->v : h->k);
}

/* Entries start..start+n-1 as floats [n, head_dim]: in place where they are
 * stored as f32, else decoded into scratch. */
static inline const float *pk_kv_rows(const pk_kvcache *kv, const pk_kv_head *h, int values, int start, int n,
                                      float *scratch)
{
    if (pk_kv_is_f32(kv, values)) return pk_kv_f32_rows(h, values) + (size_t)start * (size_t)kv->head_dim;
    pk_kv_read(kv, h, values, start, n, scratch);
    return scratch;
}

/* Store one entry's key and value (head_dim floats each) in slot `slot` of a
 * head, converted to the cache's types. */
void pk_kv_store(const pk_kvcache *kv, pk_kv_head *h, int slot, const float *key, const float *value);

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
/* Bytes per entry of one head: K + V rows as stored (scales included) and its
 * position index. */
size_t pk_kv_entry_bytes(const pk_kvcache *kv);

#endif
