/* The CUDA engine: the GPT-2 forward pass on one NVIDIA GPU, with the KV cache
 * in a device pool of fixed-size blocks (kv/block_pool.h).
 *
 * Self-contained behind this small interface so that a backend table in the
 * CPU engine can call it later. A session holds up to max_seq sequences; each
 * has its own position and every head of it its own block list. Calls that
 * return logits copy them to the host as float32. Errors go through pk_fail()
 * like the rest of the library. */
#ifndef PIKV_BACKEND_CUDA_ENGINE_H
#define PIKV_BACKEND_CUDA_ENGINE_H

#include "pikv.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How the weights and the KV cache are stored on the device; arithmetic
 * always accumulates in float32. */
typedef enum { PK_CUDA_BF16 = 0, PK_CUDA_F16, PK_CUDA_F32 } pk_cuda_dtype;

/* The storage type for a weights setting: f32 and f16 as named, bf16 for
 * AS_STORED and BF16 (16-bit halves what a decode step reads, and bf16 keeps
 * float32's range). */
pk_cuda_dtype pk_cuda_dtype_for(pikv_weight_type t);

typedef struct {
    pk_cuda_dtype dtype;
    int max_seq;        /* sequences in the session (batched decode runs up to this many) */
    long pool_blocks;   /* blocks of 16 entries in the pool (0: enough for every sequence at n_positions) */
    int use_graphs;     /* capture the decode step in a CUDA graph and replay it */
} pk_cuda_params;

typedef struct pk_cuda_session pk_cuda_session;

typedef struct {
    size_t weight_bytes;      /* device bytes of the weights */
    size_t position_bytes;    /* of which the position embeddings, a row of position_row_bytes a sequence a step */
    size_t position_row_bytes;
    size_t pool_bytes;        /* device bytes of the whole block pool */
    size_t block_bytes;       /* bytes of one block (keys and values of 16 entries of one head) */
    size_t kv_bytes_in_use;   /* blocks held by heads, in bytes */
    size_t kv_high_water;     /* most bytes ever held at once */
    int blocks_in_use;
    int kernels_per_decode;   /* kernel launches in one decode step (as many for any batch) */
} pk_cuda_stats;

/* 1 when a CUDA device is usable, else 0 with the reason in pikv_last_error(). */
int pk_cuda_available(void);

/* The device, driver and runtime, e.g. "NVIDIA H200 (132 SMs, 140 GiB), CUDA driver API 13.0,
 * runtime 13.0". */
int pk_cuda_describe(char *buf, size_t len);

/* Upload the model's weights and allocate the block pool. */
pk_cuda_session *pk_cuda_session_new(const pikv_model *m, const pk_cuda_params *p);
void pk_cuda_session_free(pk_cuda_session *s);

/* Run n tokens of sequence seq at its current position (a prompt, or one
 * token) and write the logits of the last row [V], or of every row [n, V]
 * when all_logits, to the host. logits may be NULL. */
int pk_cuda_forward(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits);

/* One decode step of sequences 0..n_seq-1, token ids[b] for sequence b;
 * logits [n_seq, V] on the host (may be NULL). Replays a CUDA graph when the
 * session uses graphs. */
int pk_cuda_decode(pk_cuda_session *s, const int32_t *ids, int n_seq, float *logits);

/* pk_cuda_forward that keeps every layer's queries of the call's rows on
 * the device, for the press measures below and pk_cuda_read_queries, until
 * the next such call. */
int pk_cuda_forward_queries(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits);

/* Layer `layer`'s queries of the last pk_cuda_forward_queries call, as
 * float32 [n][n_embd] (what a press that reads queries sees). */
int pk_cuda_read_queries(pk_cuda_session *s, int layer, float *queries);

/* Slots 0..len-1 of heads head0..head0+n_heads-1 of one layer of sequence
 * seq, widened to float32: keys to k and values to v, each [n_heads][len]
 * [head_dim]. Every head read must hold at least len entries. */
int pk_cuda_read_heads(pk_cuda_session *s, int seq, int layer, int head0, int n_heads, int len, float *k, float *v);

/* The press measures (press/press.h) of one head of `layer` of sequence seq,
 * computed on the device over n of its entries: slots[0..n-1], ascending,
 * which are also the entries' positions (a press runs right after the
 * prompt). Queries are those the last pk_cuda_forward_queries call kept on
 * the device, row r at position r.
 * Attention sums: out[j] = the sum over query rows row0..row0+rows-1 of the
 * softmax weight (logits scale * q.k, over the listed entries the row can
 * see) the row gives entry j, in double. */
int pk_cuda_attention_sums(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n, int row0,
                           int rows, float scale, double *out);
/* norms[j] = ||k_j||, summed in double (knorm's score). */
int pk_cuda_key_norms(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n, float *norms);
/* Expected attention's logits of the entries, with the mean and covariance
 * of query rows first_row.. of the kept queries, and the values' squared
 * norms, all in double. */
int pk_cuda_expected_logits(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                            int first_row, double *logit, double *value_sq);
/* moe_router's clustering (press.h's kmeans and key_cosines measures) over
 * the listed entries, bit for bit what router/kmeans.c computes from the same
 * keys: pk_kmeans_balanced of their unit keys into k clusters (centroids
 * [k][head_dim], assign [n]), and the cosines of their unit keys to `count`
 * unit centroids (out [n][count]). */
int pk_cuda_kmeans(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n, int k,
                   int iterations, float *centroids, int *assign);
int pk_cuda_key_cosines(pk_cuda_session *s, int seq, int layer, int head, const int32_t *slots, int n,
                        const float *centroids, int count, float *out);
/* Query rows row0..row0+rows-1 of one head of the kept queries, [rows][head_dim]. */
int pk_cuda_head_queries(pk_cuda_session *s, int layer, int head, int row0, int rows, float *queries);

/* What one head keeps after a press: the slots that stay (ascending), and
 * for a streaming head (recent > 0) the ring it becomes, with `next` the
 * slot the next decoded token overwrites once the head holds sink + recent
 * entries (ignored until then: the head first fills up to its window). */
typedef struct {
    const int32_t *slots;
    int n;
    int sink, recent, next;
} pk_cuda_head_keep;

/* Apply a press's decision to one layer of sequence seq: each head's kept
 * entries move to its first slots on the device and the blocks past them go
 * back to the pool at once. heads is [n_head]. */
int pk_cuda_keep(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads);

/* Several GPUs (engine/cuda/group_cuda.h). A session on one of n_rank GPUs
 * holds part of each head: after the prompt and any press, pk_cuda_keep_shard
 * keeps the slots heads[h] of each head of one layer (ascending; any subset,
 * but a streaming ring whole or not at all) and marks whether this GPU takes
 * the head's new entries (tail[h]: it must then hold the head's last entry);
 * the others are detached and stop growing. Once pk_cuda_set_exchange has
 * been called, each decode step ends every layer's attention in a softmax
 * state per (sequence, head), float32 [n_seq][n_head][head_dim + 2] (weighted
 * values, max, sum), and calls exchange(ctx, states, gathered, count, stream)
 * with count = its floats; exchange must leave every GPU's states in gathered
 * [n_rank][count], rank by rank, in stream order on `stream` (a
 * cudaStream_t), and return 0 (or -1 after pk_fail). The states are then
 * merged in rank order. Only decode steps run on such a session, launched
 * rather than replayed. */
typedef int (*pk_cuda_exchange_fn)(void *ctx, const float *states, float *gathered, size_t count, void *stream);
int pk_cuda_keep_shard(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads, const int *tail);
int pk_cuda_set_exchange(pk_cuda_session *s, int n_rank, pk_cuda_exchange_fn exchange, void *ctx);

/* Query-time routing (engine/cuda/routing_cuda.h) of sequence seq. In every
 * pk_cuda_forward call of that sequence from now on, between each layer's
 * QKV product and its attention, the layer's query rows go to the host and
 * route(ctx, layer, queries [n][n_embd], n, masks [n][n_head]) sets each
 * row's mask per head (0 or -1 after pk_fail); a row then reads slot j of
 * head h only when j is past the head's routed slots or the slot's mask
 * (pk_cuda_route_head) shares a bit with masks[row][h]. Inside route, the
 * call's own rows count as held for pk_cuda_read_heads. A host round trip a
 * layer cannot be replayed, so decode steps and replays that include the
 * sequence are refused; a truncation or press of the sequence makes its
 * later calls fail until routing begins again. */
typedef int (*pk_cuda_route_fn)(void *ctx, int layer, const float *queries, int n, uint64_t *masks);
int pk_cuda_route_begin(pk_cuda_session *s, int seq, pk_cuda_route_fn route, void *ctx);
/* The masks of the routed sequence's slots 0..n-1 of one head (n at most
 * what the head holds); the head's later slots are read by every row. */
int pk_cuda_route_head(pk_cuda_session *s, int layer, int head, const uint64_t *masks, int n);
void pk_cuda_route_end(pk_cuda_session *s);

/* Entries head `head` of `layer` holds in sequence seq, and its blocks in
 * *held_blocks (may be NULL); -1 when out of range. */
int pk_cuda_head_length(const pk_cuda_session *s, int seq, int layer, int head, int *held_blocks);

/* 1 when that head is a streaming ring (DuoAttention), else 0. */
int pk_cuda_head_streams(const pk_cuda_session *s, int seq, int layer, int head);

/* Bytes of blocks sequence seq's heads will hold after n_more decoded tokens
 * (a ring stops growing at its window): what admitting one more such
 * sequence costs the pool. */
size_t pk_cuda_sequence_bytes(const pk_cuda_session *s, int seq, int n_more);

/* pk_cuda_decode that returns each sequence's greedy choice, next[b] for
 * b < n_seq, taken on the device (the first largest logit, as on the CPU),
 * instead of copying n_seq * V logits to the host. */
int pk_cuda_decode_greedy(pk_cuda_session *s, const int32_t *ids, int n_seq, int32_t *next);

/* `steps` greedy decode steps of sequences 0..n_seq-1 from tokens ids, each
 * step's choices (taken as in pk_cuda_decode_greedy) fed to the next on the
 * device, with one synchronisation for them all: chosen [steps][n_seq]. The
 * blocks for every step are reserved before the first. */
int pk_cuda_decode_greedy_steps(pk_cuda_session *s, const int32_t *ids, int n_seq, int steps, int32_t *chosen);

/* Cut sequence seq back to its first len tokens, freeing the blocks past
 * them; a compressed sequence only back to 0. */
int pk_cuda_truncate(pk_cuda_session *s, int seq, int len);

/* The position of sequence seq's next token (-1 for no such sequence). */
int pk_cuda_position(const pk_cuda_session *s, int seq);

void pk_cuda_get_stats(const pk_cuda_session *s, pk_cuda_stats *st);

/* Greedy generation on sequence seq: prefill the prompt, then n_new decode
 * steps; out gets the n_new tokens. */
int pk_cuda_generate_greedy(pk_cuda_session *s, int seq, const int32_t *prompt, int n_prompt, int n_new,
                            int32_t *out);

/* Benchmark helpers. Device-to-device copy bandwidth (bytes read plus
 * written per second) over a 2 GiB buffer, or -1. */
double pk_cuda_copy_bandwidth(void);

/* Device time of one decode step of sequences 0..n_seq-1: `steps` graph
 * replays back to back, timed with events, without copying logits out. The
 * sequences are put back where they were afterwards (a streaming head's ring
 * then holds the replayed tokens). */
int pk_cuda_time_replay(pk_cuda_session *s, int n_seq, int steps, double *us_per_step);

#ifdef __cplusplus
}
#endif

#endif
