/* Runs the CUDA engine's kernels (src/backend/cuda/kernels.cuh) on the host,
 * so that their arithmetic and indexing are tested on machines without a GPU.
 *
 * Every thread of a block is a fiber: its own stack on one host thread,
 * switched by emu_switch (x86-64). Each fiber runs until it reaches a
 * barrier, then the next one runs, so a barrier costs a few switches rather
 * than waking every thread of the block through the kernel, and blocks of
 * 256 threads with thousands of warp shuffles stay cheap. Blocks run one
 * after another, so a kernel's __shared__ variables become function statics
 * shared by the block's threads. __syncthreads() is a barrier over the block,
 * and a warp shuffle is a barrier over the warp around a per-warp slot array
 * (every lane of the engine's warps takes part in each shuffle). Between two
 * barriers the fibers run in ascending order in one round and in descending
 * order in the next, so that a value read without a barrier after another
 * thread wrote it comes out wrong in one of the two orders. Include this
 * before kernels.cuh and compile as C++20 with CUDA's include directory. */
#ifndef PIKV_TESTS_CUDA_EMULATION_H
#define PIKV_TESTS_CUDA_EMULATION_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#if !defined(__x86_64__)
#error "tests/cuda/emulation.h switches fibers with x86-64 code"
#endif

#define PK_CUDA_EMULATION 1
#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)

/* Save the callee-saved registers and the stack pointer to *from, continue on
 * the stack `to` (saved by an earlier switch, or laid out by emu_launch). */
extern "C" void emu_switch(void **from, void *to);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

/* A barrier: the last of `count` arrivals moves the phase on and releases the others. */
struct emu_barrier {
    unsigned count, arrived, phase;
};

struct emu_fiber {
    void *sp;
    const emu_barrier *waiting; /* blocked until its phase moves past `phase` */
    unsigned phase, exchanges;
    bool done;
};

struct emu_warp {
    emu_barrier sync;
    float slot[2][32]; /* shuffles alternate between the two, so one barrier each suffices */
};

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static emu_warp *emu_my_warp;
static emu_barrier emu_block_sync;
static std::vector<float4> emu_dynamic;
static std::vector<emu_fiber> emu_fibers;
static std::vector<void *> emu_stacks;
static emu_fiber *emu_current;
static void *emu_scheduler_sp;
static const std::function<void()> *emu_body;
enum { EMU_STACK = 256 << 10 };

/* Where a fiber starts: entered by emu_switch's return, it runs the kernel
 * and goes back to the scheduler for good. */
static void emu_fiber_entry()
{
    (*emu_body)();
    emu_current->done = true;
    emu_switch(&emu_current->sp, emu_scheduler_sp);
    std::abort();
}

static inline void emu_wait(emu_barrier &b)
{
    if (++b.arrived == b.count) {
        b.arrived = 0;
        b.phase++;
        return;
    }
    emu_current->waiting = &b;
    emu_current->phase = b.phase;
    emu_switch(&emu_current->sp, emu_scheduler_sp);
}

static inline float *dynamic_shared() { return reinterpret_cast<float *>(emu_dynamic.data()); }
static inline void __syncthreads() { emu_wait(emu_block_sync); }
static inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
static inline uint4 __ldg(const uint4 *p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline void __threadfence() {}
template <typename T> static inline T __ldcg(const T *p) { return *p; }
/* The device's explicitly rounded operations are the host's own, compiled
 * without contraction into fused multiply-adds (-ffp-contract=off). */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return std::sqrt(a); }
static inline float __double2float_rn(double a) { return (float)a; }
static inline unsigned __float_as_uint(float f)
{
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
/* Blocks run one at a time, their threads one at a time, so a plain add is atomic here. */
static inline int atomicAdd(int *p, int v)
{
    const int old = *p;
    *p += v;
    return old;
}

/* Lane `from(lane)`'s value of v, for every lane of the warp. A lane reads
 * slot s of exchange n after the barrier of n; it is written again only in
 * exchange n + 2, after the barrier of n + 1, which waits for that read. */
template <typename F> static inline float emu_exchange(float v, F from)
{
    emu_warp *w = emu_my_warp;
    const unsigned lane = threadIdx.x & 31;
    float *slot = w->slot[emu_current->exchanges++ & 1];
    slot[lane] = v;
    emu_wait(w->sync);
    return slot[from(lane)];
}

static inline float __shfl_xor_sync(unsigned, float v, int mask)
{
    return emu_exchange(v, [mask](unsigned lane) { return lane ^ (unsigned)mask; });
}

static inline float __shfl_sync(unsigned, float v, int src)
{
    return emu_exchange(v, [src](unsigned) { return (unsigned)src; });
}

/* An int shuffled as the float with its bits (only moved, never computed on). */
template <typename S> static inline int emu_shuffle_int(int v, S shuffle)
{
    float f;
    std::memcpy(&f, &v, sizeof f);
    f = shuffle(f);
    std::memcpy(&v, &f, sizeof v);
    return v;
}

static inline int __shfl_xor_sync(unsigned m, int v, int mask)
{
    return emu_shuffle_int(v, [m, mask](float f) { return __shfl_xor_sync(m, f, mask); });
}

static inline int __shfl_sync(unsigned m, int v, int src)
{
    return emu_shuffle_int(v, [m, src](float f) { return __shfl_sync(m, f, src); });
}

static inline void __syncwarp() { emu_wait(emu_my_warp->sync); }

/* Run the n fibers of one block to their ends. */
static void emu_run_block(unsigned n, std::vector<emu_warp> &warps)
{
    for (unsigned t = 0; t < n; t++) {
        /* The first switch into a fiber pops six registers and returns to
         * emu_fiber_entry with the stack aligned as after a call. */
        void **top = reinterpret_cast<void **>(static_cast<char *>(emu_stacks[t]) + EMU_STACK) - 8;
        std::memset(top, 0, 8 * sizeof *top);
        top[6] = reinterpret_cast<void *>(&emu_fiber_entry);
        emu_fibers[t] = emu_fiber{top, nullptr, 0, 0, false};
    }
    for (unsigned round = 0;; round++) {
        bool ran = false, left = false;
        for (unsigned i = 0; i < n; i++) {
            const unsigned t = round % 2 ? n - 1 - i : i;
            emu_fiber &f = emu_fibers[t];
            if (f.done) continue;
            left = true;
            if (f.waiting && f.waiting->phase == f.phase) continue;
            f.waiting = nullptr;
            threadIdx = make_uint3(t, 0, 0);
            emu_my_warp = &warps[t / 32];
            emu_current = &f;
            emu_switch(&emu_scheduler_sp, f.sp);
            ran = true;
        }
        if (!left) return;
        if (!ran) {
            fprintf(stderr, "emulation: every thread of block (%u, %u, %u) waits at a barrier\n", blockIdx.x,
                    blockIdx.y, blockIdx.z);
            std::abort();
        }
    }
}

/* kernel<<<grid, block, smem>>>(args...), block by block. */
template <typename... P, typename... A> static void emu_launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...), A... args)
{
    const unsigned n = block.x * block.y * block.z;
    emu_dynamic.assign(smem / sizeof(float4) + 1, make_float4(NAN, NAN, NAN, NAN));
    while (emu_stacks.size() < n) emu_stacks.push_back(std::malloc(EMU_STACK));
    emu_fibers.resize(n);
    const std::function<void()> body = [&] { kernel(args...); };
    emu_body = &body;
    blockDim = block;
    gridDim = grid;
    std::vector<emu_warp> warps((n + 31) / 32);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = make_uint3(x, y, z);
                emu_block_sync = emu_barrier{n, 0, 0};
                for (auto &w : warps) w.sync = emu_barrier{32, 0, 0};
                emu_run_block(n, warps);
            }
}

#endif
