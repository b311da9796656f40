/* A press on the CUDA engine (backend/cuda/engine.h), built only by `make cuda`.
 *
 * The prompt is prefilled on the GPU against the full cache, as kvpress and
 * the CPU engine do. Then, layer by layer, the heads' keys and values (and the
 * prompt's queries, for a press that reads them) are copied to the host into
 * a float32 cache, the press decides there by the same code as on the CPU
 * (pk_compress_layer: the press fills a keep set, the host cache applies it),
 * and the GPU moves each head's kept entries into its first blocks and gives
 * the rest back to the pool (pk_cuda_keep). DuoAttention's streaming heads
 * become rings of exactly ceil((sink + recent) / 16) blocks that roll in
 * place while decoding. With prefill_chunk they are rings before the first
 * token: the prompt goes in that many tokens a call, each row seeing only its
 * window, and the engine cuts the rings back after each call.
 *
 * Two kinds of press need less than a copy of the cache. One that decides
 * from positions alone (PK_PRESS_ENTRY_FREE: none, streaming_llm, duo, and
 * compositions of them) gets a host cache of positions and nothing is
 * copied. One that reads the layer only through the press measures
 * (PK_PRESS_MEASURED: knorm, snapkv, tova, observed_attention,
 * expected_attention, pyramidkv, moe_router, eplb_duo and the wrappers around
 * them) gets that cache of positions too, with measures the device computes
 * from its own entries and the prompt's queries it kept: attention sums of
 * the observation window, key norms and expected-attention logits, one value
 * an entry each, and moe_router's clustering (balanced k-means of a head's
 * keys and their cosines to its centroids: the centroids, a cluster and one
 * cosine per expert an entry), computed bit for bit as the host computes
 * them; moe_router also reads the window's queries themselves (one head's
 * rows: no values, no other queries). The host chooses by the CPU's code. Every other press (keydiff,
 * random, ...) is scored on the host from a copy: its decisions are the CPU
 * code's on the device's own values, and the price is one copy of the cache
 * over PCIe per compression, which the report counts as compression time.
 *
 * A press that scores by reconstructing the context (kvzip) needs forward
 * passes of its own after the prompt, which the GPU does not run: the CPU
 * engine prefills the same prompt with the press on the host's weights, and
 * the GPU keeps the entries the CPU's cache kept (the same positions, since
 * both prefilled the prompt from position 0). Nothing is copied; the CPU's
 * whole prefill and reconstruction are the compression's time.
 *
 * moe_router with route=1 is compressed here like any moe_router; its
 * routing of later queries is engine/cuda/routing_cuda.h's. */
#ifndef PIKV_ENGINE_CUDA_PRESS_CUDA_H
#define PIKV_ENGINE_CUDA_PRESS_CUDA_H

#include "backend/cuda/engine.h"
#include "press/press.h"

/* Where a press's decision comes from on the GPU. */
typedef enum {
    PK_CUDA_FROM_POSITIONS,
    PK_CUDA_SCORED_ON_DEVICE,
    PK_CUDA_SCORED_ON_HOST,
    PK_CUDA_DECIDED_BY_CPU_ENGINE
} pk_cuda_press_mode;

typedef struct {
    size_t kv_bytes_before, kv_bytes_after; /* the sequence's KV blocks before and after the press */
    double prefill_s, compression_s;        /* the GPU prefill; copies, the press and the compaction */
    pk_cuda_press_mode mode;
    size_t bytes_to_host;                   /* what the press needed copied from the device */
} pk_cuda_press_stats;

/* How a press runs on the GPU, and that as a phrase for reports. */
pk_cuda_press_mode pk_cuda_press_mode_of(const pk_press *p);
const char *pk_cuda_press_how(pk_cuda_press_mode mode);

/* Why pk_cuda_prefill_press cannot run a press (a phrase following the
 * press's name), or NULL when it can. */
const char *pk_cuda_press_unsupported(const pk_press *p);

/* Fail (pk_fail, naming the press and `where`, e.g. "in a GPU group") when
 * the press works on one sequence's state between calls: one that acts
 * while decoding, or routes later queries (route=1). 0 otherwise. */
int pk_cuda_refuse_one_sequence(const pk_press *p, const char *where);

/* Prefill the n prompt tokens of sequence seq (which must be empty) and
 * compress its cache with the press (NULL: none). logits [V] of the last
 * prompt token may be NULL; st may be NULL. */
int pk_cuda_prefill_press(pk_cuda_session *s, const pikv_model *m, int seq, const int32_t *ids, int n, pk_press *press,
                          float *logits, pk_cuda_press_stats *st);

#endif
