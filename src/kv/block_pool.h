/* A pool of fixed-size KV blocks and the block list of every head of every
 * sequence: the bookkeeping of a paged KV cache, kept on the host.
 *
 * A block holds `block_entries` consecutive entries (keys and values) of one
 * head. Each (sequence, layer, head) owns a list of blocks, so a head that keeps
 * fewer entries holds fewer blocks. Freed blocks go on a LIFO free list and
 * the next allocation takes the most recently freed one, so memory given back
 * by a truncation is reused at once. The storage itself lives elsewhere (the
 * CUDA backend keeps it in device memory); this table says which block of the
 * storage holds which entries, and records which part of the table changed
 * since it was last copied to the device. */
#ifndef PIKV_KV_BLOCK_POOL_H
#define PIKV_KV_BLOCK_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_blocks;          /* capacity of the storage, in blocks */
    int block_entries;     /* entries of one head per block */
    size_t block_bytes;    /* bytes of one block's storage */
    int n_seq, n_heads;    /* sequences; heads of one sequence (n_layer * n_head) */
    int max_blocks;        /* longest block list of one head */
    int32_t *table;        /* [n_seq][max_blocks][n_heads]: block ids, -1 where none */
    int32_t *held;         /* [n_seq][n_heads]: blocks each head holds */
    int32_t *free_ids;     /* LIFO stack of free block ids */
    int n_free;
    int high_water;        /* most blocks ever in use at once */
    size_t dirty_lo, dirty_hi; /* table entries [lo, hi) changed since pk_block_pool_clean */
} pk_block_pool;

/* An empty pool of n_blocks blocks of block_bytes each, for n_seq sequences of
 * n_heads heads whose lists hold at most max_entries entries. */
int pk_block_pool_init(pk_block_pool *p, int n_blocks, int block_entries, size_t block_bytes, int n_seq, int n_heads,
                       int max_entries);
void pk_block_pool_free(pk_block_pool *p);

/* Make every head of sequence `seq` hold blocks for its first `len` entries.
 * Fails (pool full, or len over max_entries) without taking any block. */
int pk_block_pool_reserve(pk_block_pool *p, int seq, int len);

/* The same with a length per head: head h of sequence `seq` gets blocks for
 * len[h] + extra entries (len NULL: extra for every head), all or none. */
int pk_block_pool_reserve_heads(pk_block_pool *p, int seq, const int32_t *len, int extra);

/* Blocks held by one head of a sequence. */
int pk_block_pool_held(const pk_block_pool *p, int seq, int head);

/* Keep the blocks for the first `len` entries of one head (head = layer *
 * n_head + h) and free the rest. */
void pk_block_pool_truncate_head(pk_block_pool *p, int seq, int head, int len);

/* The same for every head of the sequence. */
void pk_block_pool_truncate(pk_block_pool *p, int seq, int len);

/* The block holding entry `entry` of one head (-1 when it holds none). */
int32_t pk_block_pool_block(const pk_block_pool *p, int seq, int head, int entry);

int pk_block_pool_in_use(const pk_block_pool *p);
size_t pk_block_pool_bytes_in_use(const pk_block_pool *p);
size_t pk_block_pool_high_water_bytes(const pk_block_pool *p);

/* Forget the changes recorded so far (after the table was copied out). */
void pk_block_pool_clean(pk_block_pool *p);

#endif
