/* Deterministic token ids for the CUDA tests. */
#ifndef PIKV_TESTS_CUDA_TOKENS_H
#define PIKV_TESTS_CUDA_TOKENS_H

#include <stdint.h>

/* n ids in 1..vocab-1 from a seed (splitmix64). */
static inline void fill_tokens(int32_t *ids, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        ids[i] = 1 + (int32_t)((z ^ (z >> 31)) % (uint64_t)(vocab - 1));
    }
}

#endif
