/* The loads of KV shards, measured on real compressed caches: how many
 * entries each (sequence, layer, head) holds once a press has compressed a
 * context, what `pikv placement` places on simulated GPUs. */
#ifndef PIKV_BENCH_SHARD_LOADS_H
#define PIKV_BENCH_SHARD_LOADS_H

#include "eval/tasks.h"
#include "pikv.h"

#include <stddef.h>
#include <stdint.h>

/* Prefill n_seq contexts of `tokens` tokens each into an empty cache of s,
 * compressed by press (may be NULL), and record every head's entries after
 * the prefill: len[(i * n_layer + l) * n_head + h]. Context i is `pikv
 * compare`'s needle task (a pass key at half depth) with seed seed + i.
 * progress (may be NULL) is called after each context. */
int pk_measure_head_lens(pikv_session *s, pikv_press *press, const pk_haystack *h, int n_seq, int tokens,
                         uint64_t seed, void (*progress)(int done, int total, void *ctx), void *ctx, int *len);

/* Bytes one cache entry of s takes: its key and value rows as stored and its
 * position. */
size_t pk_session_entry_bytes(const pikv_session *s);

/* A batch of `batch` sequences from n_seq measured ones (sequence b takes
 * measured sequence b % n_seq), as every layer's shards in head-major order:
 * out[l][h * batch + b] = len[((b % n_seq) * n_layer + l) * n_head + h].
 * Head-major order makes an equal count of shards per GPU the split of
 * tensor parallelism: each GPU a share of the heads, of every sequence. */
void pk_batch_shards(const int *len, int n_seq, int n_layer, int n_head, int batch, int *out);

#endif
