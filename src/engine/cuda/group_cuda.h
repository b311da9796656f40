/* Decoding on several GPUs: KV shards placed by DeepSeek's EPLB, decode
 * attention merged across GPUs (docs/multi-gpu.md).
 *
 * One process, one thread per GPU for each call: every rank has a session
 * (backend/cuda/engine.h) with the whole model's weights, prefills every
 * prompt and runs the press, so that all ranks hold the same compressed
 * cache; pk_cuda_group_place then cuts each (sequence, layer, head) cache into
 * the slices that EPLB (or an equal count of heads) gives each GPU, and each
 * rank keeps only its own. A decode step then runs the dense part of every
 * layer on every GPU, attention over each GPU's slices, and one exchange per
 * layer of the softmax states (backend/cuda/exchange.h), merged in rank
 * order so that every GPU computes the same logits and the same greedy
 * choice. Threads rather than processes: the ranks share the model on the
 * host and the press's decisions, and a failure on one GPU reaches the others
 * without a second channel. */
#ifndef PIKV_ENGINE_CUDA_GROUP_CUDA_H
#define PIKV_ENGINE_CUDA_GROUP_CUDA_H

#include "backend/cuda/engine.h"
#include "backend/cuda/exchange.h"
#include "press/press.h"
#include "router/placement.h"

typedef struct {
    int n_gpu;               /* ranks, at most 64 */
    int one_device;          /* every rank on GPU 0, exchanging by host-ordered copies (GPU 0..n_gpu-1 and NCCL if 0) */
    pk_cuda_params session;  /* each rank's session (its use_graphs is ignored: steps are launched) */
    pk_place_policy policy;  /* how shards are placed */
} pk_cuda_group_params;

typedef struct pk_cuda_group pk_cuda_group;

/* What a placement gave each GPU, summed over layers and sequences. */
typedef struct {
    int n_gpu;
    long entries[64];        /* KV entries each GPU holds */
    size_t kv_bytes[64];     /* the blocks they take in its pool */
    double imbalance;        /* Σ over layers of the busiest GPU's entries ÷ Σ of the mean GPU's (1 = even) */
    double equal_imbalance;  /* the same had an equal count of heads gone to each GPU */
    long split_shards;       /* (sequence, layer, head) caches cut over more than one GPU */
} pk_cuda_group_report;

pk_cuda_group *pk_cuda_group_new(const pikv_model *m, const pk_cuda_group_params *p);
void pk_cuda_group_free(pk_cuda_group *g);

/* Prefill sequence seq's prompt with press (may be NULL) on every GPU;
 * logits of its last row from the first GPU (may be NULL). Every GPU must
 * keep the same number of entries in each head. Before pk_cuda_group_place. */
int pk_cuda_group_prefill(pk_cuda_group *g, int seq, const int32_t *ids, int n, pk_press *press, float *logits);

/* Place sequences 0..n_seq-1's caches on the GPUs and keep each GPU's
 * slices; a streaming ring stays whole on one GPU. From then on only decode
 * steps of those sequences run. rep may be NULL. */
int pk_cuda_group_place(pk_cuda_group *g, int n_seq, pk_cuda_group_report *rep);

/* One decode step of sequences 0..n_seq-1 on every GPU: logits [n_seq][V]
 * (may be NULL), which every GPU must have computed to the same bits. */
int pk_cuda_group_decode(pk_cuda_group *g, const int32_t *ids, int n_seq, float *logits);

/* `steps` greedy steps (pk_cuda_decode_greedy_steps on every GPU), whose
 * choices every GPU must agree on: chosen [steps][n_seq]. */
int pk_cuda_group_decode_greedy_steps(pk_cuda_group *g, const int32_t *ids, int n_seq, int steps, int32_t *chosen);

/* The session of rank `rank` (for its statistics). */
pk_cuda_session *pk_cuda_group_session(pk_cuda_group *g, int rank);

#endif
