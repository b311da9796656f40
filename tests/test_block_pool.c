/* The KV block pool's bookkeeping (the CUDA engine's paged cache, checked on
 * the host): block lists grow a block per block_entries entries, a truncation
 * frees exactly the blocks past the kept entries and the next reservation takes
 * them back at once, the high-water mark counts the most blocks held, a full
 * pool refuses a reservation without taking anything, the changed part of
 * the table is recorded for the copy to the device, and a failed allocation in
 * init is reported and leaks nothing. */
#include "check.h"
#include "util/mem.h"
#include "kv/block_pool.h"
#include "pikv.h"

#include <string.h>

/* Every block id held by some head appears once, and never on the free list. */
static int ids_consistent(const pk_block_pool *p)
{
    int ok = 1, *seen = calloc((size_t)p->n_blocks, sizeof *seen);
    for (int s = 0; s < p->n_seq; s++)
        for (int h = 0; h < p->n_heads; h++)
            for (int b = 0; b < p->held[s * p->n_heads + h]; b++) {
                int id = pk_block_pool_block(p, s, h, b * p->block_entries);
                ok &= id >= 0 && id < p->n_blocks && seen[id]++ == 0;
            }
    for (int i = 0; i < p->n_free; i++) ok &= seen[p->free_ids[i]]++ == 0;
    for (int i = 0; i < p->n_blocks; i++) ok &= seen[i] == 1;
    free(seen);
    return ok;
}

static void check_growth_and_truncation(void)
{
    pk_block_pool p;
    /* 2 sequences of 3 heads, blocks of 16 entries, 64 entries per head at most. */
    CHECK(pk_block_pool_init(&p, 20, 16, 4096, 2, 3, 64) == 0, "init: %s", pikv_last_error());
    CHECK(p.max_blocks == 4, "max_blocks %d, expected 4", p.max_blocks);
    CHECK(pk_block_pool_reserve(&p, 0, 1) == 0 && pk_block_pool_in_use(&p) == 3, "1 entry: %d blocks",
          pk_block_pool_in_use(&p));
    CHECK(pk_block_pool_reserve(&p, 0, 16) == 0 && pk_block_pool_in_use(&p) == 3, "16 entries: %d blocks",
          pk_block_pool_in_use(&p));
    CHECK(pk_block_pool_reserve(&p, 0, 17) == 0 && pk_block_pool_in_use(&p) == 6, "17 entries: %d blocks",
          pk_block_pool_in_use(&p));
    CHECK(pk_block_pool_reserve(&p, 1, 40) == 0 && pk_block_pool_in_use(&p) == 15, "seq 1, 40 entries: %d blocks",
          pk_block_pool_in_use(&p));
    CHECK(pk_block_pool_bytes_in_use(&p) == 15 * 4096, "bytes in use %zu", pk_block_pool_bytes_in_use(&p));
    CHECK(ids_consistent(&p), "block ids after growth");
    CHECK(pk_block_pool_block(&p, 0, 1, 40) == -1, "entry 40 of seq 0 has no block");

    /* Sequence 1 back to 5 entries: its heads keep 1 block each, 6 blocks freed. */
    const int32_t second = pk_block_pool_block(&p, 1, 2, 16), third = pk_block_pool_block(&p, 1, 2, 32);
    pk_block_pool_truncate(&p, 1, 5);
    CHECK(pk_block_pool_in_use(&p) == 9, "after truncation %d blocks in use, expected 9", pk_block_pool_in_use(&p));
    CHECK(p.high_water == 15, "high-water %d, expected 15", p.high_water);
    CHECK(ids_consistent(&p), "block ids after truncation");
    /* The last head freed (head 2) is the first to grow again: the free list is
     * LIFO, so it takes back its own blocks in their order. */
    pk_block_pool_truncate_head(&p, 1, 0, 5);
    pk_block_pool_truncate_head(&p, 1, 1, 5);
    CHECK(pk_block_pool_reserve(&p, 1, 40) == 0 && p.high_water == 15, "regrowth: high-water %d", p.high_water);
    CHECK(pk_block_pool_block(&p, 1, 0, 16) == second && pk_block_pool_block(&p, 1, 0, 32) == third,
          "head 0 took blocks %d, %d; head 2 freed %d, %d last", pk_block_pool_block(&p, 1, 0, 16),
          pk_block_pool_block(&p, 1, 0, 32), second, third);
    CHECK(ids_consistent(&p), "ids after regrowth");

    /* One head alone: truncating it leaves the others untouched. */
    pk_block_pool_truncate_head(&p, 1, 0, 0);
    CHECK(p.held[3] == 0 && p.held[4] == 3 && p.held[5] == 3, "per-head truncation: %d %d %d", p.held[3], p.held[4],
          p.held[5]);
    pk_block_pool_free(&p);
}

static void check_reuse_over_calls(void)
{
    pk_block_pool p;
    CHECK(pk_block_pool_init(&p, 64, 16, 1, 1, 4, 256) == 0, "init");
    int grew = 0;
    for (int call = 0; call < 100; call++) {
        int len = 50 - call % 9; /* the first call is the longest: 4 blocks per head */
        CHECK(pk_block_pool_reserve(&p, 0, len) == 0, "call %d", call);
        grew += p.high_water != 16;
        pk_block_pool_truncate(&p, 0, 0);
    }
    CHECK(grew == 0 && pk_block_pool_in_use(&p) == 0, "high-water moved in %d calls; %d blocks left", grew,
          pk_block_pool_in_use(&p));
    pk_block_pool_free(&p);
}

static void check_limits_and_dirty_range(void)
{
    pk_block_pool p;
    CHECK(pk_block_pool_init(&p, 5, 16, 1, 1, 2, 100) == 0, "init");
    CHECK(p.dirty_lo == 0 && p.dirty_hi == (size_t)p.max_blocks * 2, "a new table is dirty everywhere");
    pk_block_pool_clean(&p);
    CHECK(pk_block_pool_reserve(&p, 0, 32) == 0, "32 entries fit");
    /* Table [max_blocks][heads]: blocks 0 and 1 of both heads, entries 0..3. */
    CHECK(p.dirty_lo == 0 && p.dirty_hi == 4, "dirty range [%zu, %zu), expected [0, 4)", p.dirty_lo, p.dirty_hi);
    pk_block_pool_clean(&p);
    /* 3 entries more need 2 blocks, 1 is free: refused, nothing taken. */
    CHECK(pk_block_pool_reserve(&p, 0, 35) == -1 && strstr(pikv_last_error(), "pool full"), "full pool: %s",
          pikv_last_error());
    CHECK(pk_block_pool_in_use(&p) == 4 && p.dirty_hi == 0, "a refused reservation took %d blocks",
          pk_block_pool_in_use(&p) - 4);
    /* 100 entries round up to 7 blocks: 112 entries is the most a head holds. */
    CHECK(pk_block_pool_reserve(&p, 0, 113) == -1 && strstr(pikv_last_error(), "exceed"), "over max entries: %s",
          pikv_last_error());
    pk_block_pool_truncate(&p, 0, 16);
    CHECK(p.dirty_lo == 2 && p.dirty_hi == 4, "truncation dirties [%zu, %zu), expected [2, 4)", p.dirty_lo, p.dirty_hi);
    pk_block_pool_free(&p);
    CHECK(pk_block_pool_init(&p, 0, 16, 1, 1, 2, 100) == -1 && strstr(pikv_last_error(), "positive"),
          "zero blocks: %s", pikv_last_error());
}

/* Heads of one sequence holding different lengths, as a press leaves them:
 * each gets its own blocks, and a reservation that does not fit takes none. */
static void check_per_head_lengths(void)
{
    pk_block_pool p;
    CHECK(pk_block_pool_init(&p, 10, 16, 1, 1, 3, 100) == 0, "init");
    const int32_t len[3] = {40, 0, 16};
    CHECK(pk_block_pool_reserve_heads(&p, 0, len, 0) == 0, "40, 0 and 16 entries");
    CHECK(pk_block_pool_held(&p, 0, 0) == 3 && pk_block_pool_held(&p, 0, 1) == 0 && pk_block_pool_held(&p, 0, 2) == 1,
          "blocks held %d %d %d, expected 3 0 1", pk_block_pool_held(&p, 0, 0), pk_block_pool_held(&p, 0, 1),
          pk_block_pool_held(&p, 0, 2));
    /* One more entry each: heads 1 and 2 need a block, head 0 has room. */
    CHECK(pk_block_pool_reserve_heads(&p, 0, len, 1) == 0 && pk_block_pool_in_use(&p) == 6, "one more: %d blocks",
          pk_block_pool_in_use(&p));
    /* 4 blocks free; 81 entries in head 1 need 5 more. */
    const int32_t big[3] = {40, 81, 16};
    CHECK(pk_block_pool_reserve_heads(&p, 0, big, 0) == -1 && strstr(pikv_last_error(), "pool full") &&
              pk_block_pool_in_use(&p) == 6,
          "refused whole: %s, %d blocks", pikv_last_error(), pk_block_pool_in_use(&p));
    pk_block_pool_free(&p);
}

/* Each of init's three allocations failing in turn. */
static void check_allocation_failures(void)
{
    int reported = 0;
    for (long n = 1; n <= 3; n++) {
        pk_block_pool p;
        pk_test_fail_alloc_after(n);
        int rc = pk_block_pool_init(&p, 8, 16, 1, 2, 2, 64);
        pk_test_fail_alloc_after(0);
        reported += rc == -1 && strstr(pikv_last_error(), "out of memory") && !p.table && !p.held && !p.free_ids;
        if (rc == 0) pk_block_pool_free(&p);
    }
    CHECK(reported == 3, "%d of 3 allocation failures reported with nothing held", reported);
}

int main(void)
{
    check_growth_and_truncation();
    check_reuse_over_calls();
    check_limits_and_dirty_range();
    check_per_head_lengths();
    check_allocation_failures();
    return check_done("test_block_pool");
}
