/* How the GPUs of a group (engine/cuda/group_cuda.h) exchange decode
 * attention states: each session's exchange callback (backend/cuda/engine.h,
 * pk_cuda_set_exchange) gathers every rank's states into every rank's buffer.
 *
 * Two transports. NCCL's all-gather, one communicator per GPU (made by
 * ncclCommInitAll), each rank's call issued by the thread that drives that
 * GPU; it needs a GPU per rank. Host-ordered copies (cudaMemcpyPeerAsync
 * between barriers) need only the CUDA runtime and also run several ranks on
 * one GPU, which is how the group is tested where one GPU is all there is. */
#ifndef PIKV_BACKEND_CUDA_EXCHANGE_H
#define PIKV_BACKEND_CUDA_EXCHANGE_H

#include "backend/cuda/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { PK_CUDA_NCCL, PK_CUDA_HOST_COPIES } pk_cuda_transport;

typedef struct pk_cuda_exchange pk_cuda_exchange;

/* What rank `rank`'s exchange callback is given as its context. */
typedef struct {
    pk_cuda_exchange *group;
    int rank;
} pk_cuda_exchange_rank;

/* GPUs present (0 where CUDA cannot count them). */
int pk_cuda_device_count(void);
/* Make `device` the calling thread's current GPU. */
int pk_cuda_use_device(int device);

/* An exchange among n_rank ranks, rank g on GPU devices[g]. NCCL needs
 * distinct GPUs and libnccl.so.2 on the library path. */
pk_cuda_exchange *pk_cuda_exchange_new(int n_rank, const int *devices, pk_cuda_transport transport);
void pk_cuda_exchange_free(pk_cuda_exchange *x);

/* The callback and rank context to give pk_cuda_set_exchange. */
pk_cuda_exchange_fn pk_cuda_exchange_function(const pk_cuda_exchange *x);
pk_cuda_exchange_rank *pk_cuda_exchange_rank_of(pk_cuda_exchange *x, int rank);

/* After a rank's step failed: every rank waiting in an exchange returns an
 * error, and so does every later exchange (make a new group to go on). */
void pk_cuda_exchange_abort(pk_cuda_exchange *x);

#ifdef __cplusplus
}
#endif

#endif
