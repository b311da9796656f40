/* Runs the CUDA engine's kernels (src/backend/cuda/kernels.cuh) on the host,
 * so that their arithmetic and indexing are tested on machines without a GPU.
 *
 * Every thread of a block is a host thread; blocks run one after another, so a
 * kernel's __shared__ variables become function statics shared by the block's
 * threads. __syncthreads() is a barrier over the block, and warp shuffles
 * exchange values through a per-warp slot array between two barriers over the
 * warp (every lane of the engine's warps takes part in each shuffle). Include
 * this before kernels.cuh and compile as C++20 with CUDA's include directory. */
#ifndef PIKV_TESTS_CUDA_EMULATION_H
#define PIKV_TESTS_CUDA_EMULATION_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#define PK_CUDA_EMULATION 1
#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)

struct emu_warp {
    std::barrier<> *sync;
    float slot[32];
};

static thread_local uint3 threadIdx, blockIdx;
static thread_local dim3 blockDim, gridDim;
static thread_local emu_warp *emu_my_warp;
static std::barrier<> *emu_block_sync;
static std::vector<float4> emu_dynamic;

static inline float *dynamic_shared() { return reinterpret_cast<float *>(emu_dynamic.data()); }
static inline void __syncthreads() { emu_block_sync->arrive_and_wait(); }
static inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
static inline uint4 __ldg(const uint4 *p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline void __threadfence() {}
template <typename T> static inline T __ldcg(const T *p) { return *p; }
/* Blocks run one at a time and only one thread of a block counts, so a plain
 * add is atomic here. */
static inline int atomicAdd(int *p, int v)
{
    const int old = *p;
    *p += v;
    return old;
}

/* Lane `from(lane)`'s value of v, for every lane of the warp. */
template <typename F> static inline float emu_exchange(float v, F from)
{
    emu_warp *w = emu_my_warp;
    const unsigned lane = threadIdx.x & 31;
    w->slot[lane] = v;
    w->sync->arrive_and_wait();
    float r = w->slot[from(lane)];
    w->sync->arrive_and_wait();
    return r;
}

static inline float __shfl_xor_sync(unsigned, float v, int mask)
{
    return emu_exchange(v, [mask](unsigned lane) { return lane ^ (unsigned)mask; });
}

static inline int __shfl_xor_sync(unsigned m, int v, int mask)
{
    float f;
    std::memcpy(&f, &v, sizeof f);
    f = __shfl_xor_sync(m, f, mask);
    std::memcpy(&v, &f, sizeof v);
    return v;
}

static inline float __shfl_sync(unsigned, float v, int src)
{
    return emu_exchange(v, [src](unsigned) { return (unsigned)src; });
}

/* kernel<<<grid, block, smem>>>(args...), block by block. */
template <typename... P, typename... A> static void emu_launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...), A... args)
{
    const unsigned n = block.x * block.y * block.z;
    emu_dynamic.assign(smem / sizeof(float4) + 1, make_float4(NAN, NAN, NAN, NAN));
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                std::barrier<> block_sync((std::ptrdiff_t)n);
                emu_block_sync = &block_sync;
                std::vector<std::barrier<> *> syncs;
                std::vector<emu_warp> warps((n + 31) / 32);
                for (auto &w : warps) w.sync = new std::barrier<>(32);
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; t++)
                    threads.emplace_back([&, t] {
                        threadIdx = make_uint3(t, 0, 0);
                        blockIdx = make_uint3(x, y, z);
                        blockDim = block;
                        gridDim = grid;
                        emu_my_warp = &warps[t / 32];
                        kernel(args...);
                    });
                for (auto &th : threads) th.join();
                for (auto &w : warps) delete w.sync;
            }
}

#endif
