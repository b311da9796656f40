/* The block pool's free list and the heads' block lists. */
#include "kv/block_pool.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

int pk_block_pool_init(pk_block_pool *p, int n_blocks, int block_entries, size_t block_bytes, int n_seq, int n_heads,
                       int max_entries)
{
    memset(p, 0, sizeof *p);
    if (n_blocks <= 0 || block_entries <= 0 || n_seq <= 0 || n_heads <= 0 || max_entries <= 0)
        return pk_fail("block pool: blocks (%d), entries per block (%d), sequences (%d), heads (%d) and entries "
                       "per head (%d) must be positive", n_blocks, block_entries, n_seq, n_heads, max_entries);
    p->n_blocks = n_blocks;
    p->block_entries = block_entries;
    p->block_bytes = block_bytes;
    p->n_seq = n_seq;
    p->n_heads = n_heads;
    p->max_blocks = (max_entries + block_entries - 1) / block_entries;
    size_t table_len = (size_t)n_seq * (size_t)p->max_blocks * (size_t)n_heads;
    p->table = pk_malloc_array(table_len, sizeof *p->table, "block table");
    p->held = pk_calloc((size_t)n_seq * (size_t)n_heads, sizeof *p->held, "block counts");
    p->free_ids = pk_malloc_array((size_t)n_blocks, sizeof *p->free_ids, "block free list");
    if (!p->table || !p->held || !p->free_ids) {
        pk_block_pool_free(p);
        return -1;
    }
    memset(p->table, 0xff, table_len * sizeof *p->table); /* -1 everywhere */
    /* Stacked so that block 0 is handed out first. */
    for (int i = 0; i < n_blocks; i++) p->free_ids[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    p->dirty_lo = 0;
    p->dirty_hi = table_len; /* the device copy starts unset */
    return 0;
}

void pk_block_pool_free(pk_block_pool *p)
{
    pk_free(p->table);
    pk_free(p->held);
    pk_free(p->free_ids);
    memset(p, 0, sizeof *p);
}

static size_t table_index(const pk_block_pool *p, int seq, int block, int head)
{
    return ((size_t)seq * (size_t)p->max_blocks + (size_t)block) * (size_t)p->n_heads + (size_t)head;
}

static void mark_dirty(pk_block_pool *p, size_t i)
{
    if (p->dirty_lo >= p->dirty_hi) {
        p->dirty_lo = i;
        p->dirty_hi = i + 1;
        return;
    }
    if (i < p->dirty_lo) p->dirty_lo = i;
    if (i + 1 > p->dirty_hi) p->dirty_hi = i + 1;
}

int pk_block_pool_reserve_heads(pk_block_pool *p, int seq, const int32_t *len, int extra)
{
    int32_t *held = p->held + (size_t)seq * (size_t)p->n_heads;
    int missing = 0;
    for (int h = 0; h < p->n_heads; h++) {
        const int entries = (len ? len[h] : 0) + extra;
        const int need = (entries + p->block_entries - 1) / p->block_entries;
        if (need > p->max_blocks)
            return pk_fail("KV block pool: %d entries per head exceed the %d a head may hold", entries,
                           p->max_blocks * p->block_entries);
        missing += need > held[h] ? need - held[h] : 0;
    }
    if (missing > p->n_free)
        return pk_fail("KV block pool full: %d more blocks needed, %d of %d free", missing, p->n_free, p->n_blocks);
    for (int h = 0; h < p->n_heads; h++) {
        const int need = ((len ? len[h] : 0) + extra + p->block_entries - 1) / p->block_entries;
        for (; held[h] < need; held[h]++) {
            size_t i = table_index(p, seq, held[h], h);
            p->table[i] = p->free_ids[--p->n_free];
            mark_dirty(p, i);
        }
    }
    int used = p->n_blocks - p->n_free;
    if (used > p->high_water) p->high_water = used;
    return 0;
}

int pk_block_pool_reserve(pk_block_pool *p, int seq, int len) { return pk_block_pool_reserve_heads(p, seq, NULL, len); }

int pk_block_pool_held(const pk_block_pool *p, int seq, int head)
{
    return p->held[(size_t)seq * (size_t)p->n_heads + (size_t)head];
}

void pk_block_pool_truncate_head(pk_block_pool *p, int seq, int head, int len)
{
    const int keep = (len + p->block_entries - 1) / p->block_entries;
    int32_t *held = p->held + (size_t)seq * (size_t)p->n_heads + head;
    /* From the end of the list, so that growing the head again takes back the
     * same blocks in the same order. */
    for (; *held > keep; (*held)--) {
        size_t i = table_index(p, seq, *held - 1, head);
        p->free_ids[p->n_free++] = p->table[i];
        p->table[i] = -1;
        mark_dirty(p, i);
    }
}

void pk_block_pool_truncate(pk_block_pool *p, int seq, int len)
{
    for (int h = 0; h < p->n_heads; h++) pk_block_pool_truncate_head(p, seq, h, len);
}

int32_t pk_block_pool_block(const pk_block_pool *p, int seq, int head, int entry)
{
    int b = entry / p->block_entries;
    return b < p->max_blocks ? p->table[table_index(p, seq, b, head)] : -1;
}

int pk_block_pool_in_use(const pk_block_pool *p) { return p->n_blocks - p->n_free; }

size_t pk_block_pool_bytes_in_use(const pk_block_pool *p)
{
    return (size_t)pk_block_pool_in_use(p) * p->block_bytes;
}

size_t pk_block_pool_high_water_bytes(const pk_block_pool *p) { return (size_t)p->high_water * p->block_bytes; }

void pk_block_pool_clean(pk_block_pool *p) { p->dirty_lo = p->dirty_hi = 0; }
