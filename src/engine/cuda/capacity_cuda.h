/* Batches and capacity on the CUDA engine: many sequences of one prompt,
 * each compressed by a press, decoded together; and how many of them a KV
 * budget holds. This is the question a smaller cache answers on a GPU: not
 * batch-1 speed (a small model is bound by launches there) but sequences in
 * the same memory and tokens per second in total. */
#ifndef PIKV_ENGINE_CUDA_CAPACITY_CUDA_H
#define PIKV_ENGINE_CUDA_CAPACITY_CUDA_H

#include "engine/cuda/press_cuda.h"

/* What one run of a batch measured. */
typedef struct {
    double prefill_s;          /* the sequences' prefills, their presses excluded */
    double decode_s;           /* the decode steps of all of them together */
    pk_cuda_press_stats press; /* of the last sequence */
    size_t kv_in_use;          /* KV bytes the session holds after the last step */
} pk_cuda_batch_run;

/* Empty sequences 0..batch-1 of s, prefill each with the prompt and compress
 * it with the press (NULL: none), then decode n_gen greedy tokens of all of
 * them together in one call, the choices taken on the device and fed to the
 * next step there, as a server would. A press that acts while decoding runs
 * one sequence (batch 1), step by step, its choices taken on the host. */
int pk_cuda_run_batch(pk_cuda_session *s, const pikv_model *m, const int32_t *prompt, int n_prompt, pk_press *press,
                      int batch, int n_gen, pk_cuda_batch_run *out);

/* Capacity at a KV budget: how many sequences of one prompt, compressed by a
 * press and then decoded n_gen tokens, fit in `budget` bytes of blocks. The
 * bytes per sequence are the pool's own accounting for one sequence run on a
 * probe session (its blocks after the press, grown by n_gen tokens, a ring
 * stopping at its window), so admitted = floor(budget / per_seq_bytes). A
 * press acts after its prompt has been prefilled whole, so the pool also
 * needs headroom for one uncompressed prompt beyond what a compressed
 * sequence holds: a pool of budget + headroom bytes runs the admitted
 * sequences, and once they are all prefilled they hold at most `budget`. */
typedef struct {
    int admitted;
    size_t budget_bytes, per_seq_bytes, headroom_bytes, block_bytes;
} pk_cuda_capacity;

/* Plan on sequence 0 of probe (emptied before and after). */
int pk_cuda_plan_capacity(pk_cuda_session *probe, const pikv_model *m, const int32_t *ids, int n, pk_press *press,
                          int n_gen, size_t budget, pk_cuda_capacity *out);

/* Plan on probe, then run the admitted sequences (at most max_seq) in a
 * session of their own whose pool is budget + headroom: one run to warm it
 * up (graph capture, cuBLAS's choices), one measured into *run. A budget
 * that holds no sequence is an error naming the bytes one needs. */
int pk_cuda_measure_capacity(pk_cuda_session *probe, const pikv_model *m, pk_cuda_dtype t, const int32_t *ids, int n,
                             pk_press *press, int n_gen, size_t budget, int max_seq, pk_cuda_capacity *plan,
                             pk_cuda_batch_run *run);

#endif
