/* The tokenizer's entry points beyond the public API of include/pikv.h. */
#ifndef PIKV_TOKENIZER_TOKENIZER_H
#define PIKV_TOKENIZER_TOKENIZER_H

#include "pikv.h"

#include <stddef.h>

/* One tokenizer file held in memory, named as in a model directory
 * ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"). */
typedef struct pk_tokenizer_file {
    const char *name;
    const void *data;   /* len bytes, not NUL-terminated; may be NULL when len is 0 */
    size_t len;
} pk_tokenizer_file;

/* Build a tokenizer exactly as pikv_tokenizer_load does from a directory, but
 * from buffers: vocab.json and merges.txt are required, tokenizer.json and
 * tokenizer_config.json optional; a name listed twice uses its first entry.
 * Messages name the file at fault ("merges.txt: line 3: ..."). This is the
 * fuzzers' way in, and a way to build tokenizers without touching the disk. */
pikv_tokenizer *pk_tokenizer_from_buffers(const pk_tokenizer_file *files, size_t n_files);

#endif
