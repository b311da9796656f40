/* The exchange of decode attention states between the GPUs of a group
 * (exchange.h): NCCL's all-gather, or copies between devices ordered by the
 * host.
 *
 * NCCL is loaded when a group asks for it (dlopen of libnccl.so.2), so the
 * library and the single-GPU paths do not depend on it being installed; its
 * header, shipped with CUDA, gives the types (a build without it has only
 * the host-ordered copies). */
#include "backend/cuda/exchange.h"

extern "C" {
#include "util/error.h"
#include "util/mem.h"
}

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <pthread.h>
#if __has_include(<nccl.h>)
#include <nccl.h>
#define PK_HAVE_NCCL 1
#else
typedef struct ncclComm *ncclComm_t;
#endif
#include <string.h>

/* The NCCL calls a group makes, resolved from libnccl.so.2. */
typedef struct {
    void *lib;
#ifdef PK_HAVE_NCCL
    decltype(&ncclCommInitAll) comm_init_all;
    decltype(&ncclAllGather) all_gather;
    decltype(&ncclCommDestroy) comm_destroy;
    decltype(&ncclCommAbort) comm_abort;
    decltype(&ncclGetErrorString) error_string;
#endif
} nccl_api;

/* A barrier that a failed rank can open for everyone, so that the others
 * return an error instead of waiting for it forever. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t moved;
    int count, waiting, round, aborted;
} abortable_barrier;

struct pk_cuda_exchange {
    int n_rank;
    pk_cuda_transport transport;
    int *devices;                 /* [n_rank] */
    pk_cuda_exchange_rank *ranks; /* [n_rank]: what each session's exchange callback gets */
    const float **sent;           /* host copies: each rank's states of the current exchange */
    abortable_barrier barrier;
    nccl_api nccl;
    ncclComm_t *comms;            /* [n_rank] */
};

static int barrier_wait(abortable_barrier *b)
{
    pthread_mutex_lock(&b->lock);
    const int round = b->round;
    if (++b->waiting == b->count) {
        b->waiting = 0;
        b->round++;
        pthread_cond_broadcast(&b->moved);
    }
    while (round == b->round && !b->aborted) pthread_cond_wait(&b->moved, &b->lock);
    const int aborted = b->aborted;
    pthread_mutex_unlock(&b->lock);
    return aborted ? pk_fail("GPU exchange: another GPU's step failed") : 0;
}

#ifdef PK_HAVE_NCCL
/* NCCL's all-gather on the rank's communicator, in stream order. */
static int exchange_nccl(void *ctx, const float *states, float *gathered, size_t count, void *stream)
{
    const pk_cuda_exchange_rank *r = (const pk_cuda_exchange_rank *)ctx;
    pk_cuda_exchange *x = r->group;
    const ncclResult_t e = x->nccl.all_gather(states, gathered, count, ncclFloat, x->comms[r->rank],
                                              (cudaStream_t)stream);
    return e == ncclSuccess ? 0 : pk_fail("GPU exchange: ncclAllGather: %s", x->nccl.error_string(e));
}

static int load_nccl(nccl_api *api)
{
    api->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!api->lib)
        return pk_fail("--gpus: NCCL is not installed here (libnccl.so.2: %s); put its directory on LD_LIBRARY_PATH",
                       dlerror());
    api->comm_init_all = (decltype(api->comm_init_all))dlsym(api->lib, "ncclCommInitAll");
    api->all_gather = (decltype(api->all_gather))dlsym(api->lib, "ncclAllGather");
    api->comm_destroy = (decltype(api->comm_destroy))dlsym(api->lib, "ncclCommDestroy");
    api->comm_abort = (decltype(api->comm_abort))dlsym(api->lib, "ncclCommAbort");
    api->error_string = (decltype(api->error_string))dlsym(api->lib, "ncclGetErrorString");
    if (!api->comm_init_all || !api->all_gather || !api->comm_destroy || !api->comm_abort || !api->error_string)
        return pk_fail("--gpus: libnccl.so.2 lacks the calls pikv needs (ncclCommInitAll, ncclAllGather, ...)");
    return 0;
}

/* Communicators over the ranks' GPUs, which must be distinct. */
static int open_nccl(pk_cuda_exchange *x)
{
    for (int g = 0; g < x->n_rank; g++)
        for (int h = 0; h < g; h++)
            if (x->devices[g] == x->devices[h])
                return pk_fail("--gpus: NCCL needs a GPU per rank, and ranks %d and %d are both on GPU %d", h, g,
                               x->devices[g]);
    x->comms = (ncclComm_t *)pk_calloc((size_t)x->n_rank, sizeof *x->comms, "NCCL communicators");
    if (!x->comms || load_nccl(&x->nccl)) return -1;
    const ncclResult_t e = x->nccl.comm_init_all(x->comms, x->n_rank, x->devices);
    if (e == ncclSuccess) return 0;
    pk_free(x->comms);
    x->comms = nullptr;
    return pk_fail("--gpus: ncclCommInitAll over %d GPUs: %s", x->n_rank, x->nccl.error_string(e));
}
#else
static int open_nccl(pk_cuda_exchange *x)
{
    (void)x;
    return pk_fail("--gpus: this pikv was built without NCCL's header (nccl.h), so only --same-gpu runs");
}
#endif

/* Every rank's states copied into every rank's gathered buffer, with the
 * host keeping order: each rank finishes its states, all meet, each copies
 * the others' states, and all meet again before any rank can write new
 * states over those another is still copying. Slow (two host round trips a
 * layer), but it needs nothing but the CUDA runtime and runs several ranks
 * on one GPU, which NCCL refuses. */
static int exchange_copies(void *ctx, const float *states, float *gathered, size_t count, void *stream)
{
    const pk_cuda_exchange_rank *r = (const pk_cuda_exchange_rank *)ctx;
    pk_cuda_exchange *x = r->group;
    cudaStream_t st = (cudaStream_t)stream;
    x->sent[r->rank] = states;
    cudaError_t e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return pk_fail("GPU exchange: finishing the states: %s", cudaGetErrorString(e));
    if (barrier_wait(&x->barrier)) return -1;
    for (int g = 0; g < x->n_rank && e == cudaSuccess; g++)
        e = cudaMemcpyPeerAsync(gathered + (size_t)g * count, x->devices[r->rank], x->sent[g], x->devices[g],
                                count * sizeof(float), st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return pk_fail("GPU exchange: copying the states: %s", cudaGetErrorString(e));
    return barrier_wait(&x->barrier);
}

extern "C" int pk_cuda_device_count(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

extern "C" int pk_cuda_use_device(int device)
{
    const cudaError_t e = cudaSetDevice(device);
    return e == cudaSuccess ? 0 : pk_fail("GPU %d: %s", device, cudaGetErrorString(e));
}

extern "C" pk_cuda_exchange *pk_cuda_exchange_new(int n_rank, const int *devices, pk_cuda_transport transport)
{
    if (n_rank < 1) return pk_fail("GPU exchange: %d GPUs", n_rank), nullptr;
    pk_cuda_exchange *x = (pk_cuda_exchange *)pk_calloc(1, sizeof *x, "GPU exchange");
    if (!x) return nullptr;
    x->n_rank = n_rank;
    x->transport = transport;
    x->devices = (int *)pk_malloc_array((size_t)n_rank, sizeof *x->devices, "GPU exchange");
    x->ranks = (pk_cuda_exchange_rank *)pk_calloc((size_t)n_rank, sizeof *x->ranks, "GPU exchange");
    x->sent = (const float **)pk_calloc((size_t)n_rank, sizeof *x->sent, "GPU exchange");
    pthread_mutex_init(&x->barrier.lock, nullptr);
    pthread_cond_init(&x->barrier.moved, nullptr);
    x->barrier.count = n_rank;
    if (!x->devices || !x->ranks || !x->sent) {
        pk_cuda_exchange_free(x);
        return nullptr;
    }
    memcpy(x->devices, devices, (size_t)n_rank * sizeof *devices);
    for (int g = 0; g < n_rank; g++) x->ranks[g] = pk_cuda_exchange_rank{x, g};
    if (transport == PK_CUDA_NCCL && open_nccl(x)) {
        pk_cuda_exchange_free(x);
        return nullptr;
    }
    return x;
}

extern "C" void pk_cuda_exchange_free(pk_cuda_exchange *x)
{
    if (!x) return;
#ifdef PK_HAVE_NCCL
    for (int g = 0; x->comms && g < x->n_rank; g++)
        if (x->comms[g]) x->nccl.comm_destroy(x->comms[g]);
#endif
    pk_free(x->comms);
    if (x->nccl.lib) dlclose(x->nccl.lib);
    pthread_mutex_destroy(&x->barrier.lock);
    pthread_cond_destroy(&x->barrier.moved);
    pk_free(x->devices);
    pk_free(x->ranks);
    pk_free(x->sent);
    pk_free(x);
}

extern "C" pk_cuda_exchange_fn pk_cuda_exchange_function(const pk_cuda_exchange *x)
{
#ifdef PK_HAVE_NCCL
    if (x->transport == PK_CUDA_NCCL) return exchange_nccl;
#else
    (void)x; /* no group of this build is made with NCCL */
#endif
    return exchange_copies;
}

extern "C" pk_cuda_exchange_rank *pk_cuda_exchange_rank_of(pk_cuda_exchange *x, int rank)
{
    return rank >= 0 && rank < x->n_rank ? &x->ranks[rank] : nullptr;
}

extern "C" void pk_cuda_exchange_abort(pk_cuda_exchange *x)
{
    pthread_mutex_lock(&x->barrier.lock);
    const int first = !x->barrier.aborted;
    x->barrier.aborted = 1;
    pthread_cond_broadcast(&x->barrier.moved);
    pthread_mutex_unlock(&x->barrier.lock);
#ifdef PK_HAVE_NCCL
    /* A rank blocked in an all-gather its peers never join waits on the GPU; aborting the communicators frees it. */
    for (int g = 0; first && x->comms && g < x->n_rank; g++)
        if (x->comms[g]) {
            x->nccl.comm_abort(x->comms[g]);
            x->comms[g] = nullptr;
        }
#else
    (void)first;
#endif
}
