/* A press that acts while decoding (decoding(...)) on one sequence of the
 * CUDA engine, built only by `make cuda`.
 *
 * On the CPU such a press sees each layer of every forward call right after
 * the layer's attention. A layer's cache is not read again until the next
 * call, so showing the press every layer after the call's last one decides
 * the same: here each call runs on the GPU keeping its queries, then the
 * press sees the layers in turn. It gets the call's query rows (one per
 * generated token) from the device, and the layer's keys and values only
 * when it is due to cut the layer (pk_press_ops.decides_next): then they are
 * copied into a float32 host cache, the press's scorer decides there by the
 * CPU's code, and the GPU keeps the chosen slots and frees the rest of each
 * head's blocks.
 *
 * The host cache mirrors which position each device slot holds: it starts
 * from a sequence that holds every token it has seen (slot = position),
 * gains each call's positions, and is compacted by the same keep sets as the
 * device. Its rows are only valid for the layer being decided. */
#ifndef PIKV_ENGINE_CUDA_DECODING_CUDA_H
#define PIKV_ENGINE_CUDA_DECODING_CUDA_H

#include "engine/cuda/press_cuda.h"

typedef struct pk_cuda_decoding pk_cuda_decoding;

/* Attach a press that acts while decoding to sequence seq, which must hold
 * every token it has seen. NULL (pk_fail) otherwise. */
pk_cuda_decoding *pk_cuda_decoding_new(pk_cuda_session *s, const pikv_config *c, int seq, pk_press *press);
void pk_cuda_decoding_free(pk_cuda_decoding *d);

/* pk_cuda_forward of n tokens with the press acting on every layer after
 * them. st (may be NULL) gains the sequence's bytes before and after the
 * press, its time, and the bytes copied to the host; its mode says the
 * press scores on the host. */
int pk_cuda_decoding_forward(pk_cuda_decoding *d, const int32_t *ids, int n, float *logits, int all_logits,
                             pk_cuda_press_stats *st);

/* The attached press. */
pk_press *pk_cuda_decoding_press(const pk_cuda_decoding *d);

#endif
