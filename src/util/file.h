/* Whole-file reading and JSON documents with errors that name the file. */
#ifndef PIKV_UTIL_FILE_H
#define PIKV_UTIL_FILE_H

#include <stddef.h>
#include <sys/types.h>

struct cJSON;

/* The most each kind of file may hold: a read is bounded by what its format
 * plausibly needs, so /dev/zero-like or runaway inputs fail instead of eating
 * memory. (Safetensors files are mapped, not read, and have no such limit.) */
#define PK_MAX_JSON_BYTES ((size_t)64 << 20)        /* config.json, index, patterns, EPLB input */
#define PK_MAX_TOKENIZER_BYTES ((size_t)256 << 20)  /* vocab.json, merges.txt, tokenizer.json */
#define PK_MAX_TEXT_BYTES ((size_t)256 << 20)       /* prompts, contexts, haystacks */

/* Open a file for reading that must be a regular file (not a FIFO, device,
 * directory or socket), without blocking on a FIFO; its size in *size. Returns
 * the descriptor, or -1 with an error that names the file. */
int pk_open_regular(const char *path, off_t *size);
/* Read a whole regular file of at most max_bytes into a NUL-terminated buffer
 * (free with pk_free); the one whole-file reader of the tree. */
char *pk_read_file(const char *path, size_t max_bytes, size_t *len);
/* Read and parse a JSON file; the error names the file, the reason and the byte offset. */
struct cJSON *pk_read_json(const char *path, size_t max_bytes);
/* Why cJSON could not parse text: "nested too deeply ..." or "invalid JSON". */
const char *pk_json_error_reason(const char *text, size_t len);
/* dir + "/" + name into out; fails if it does not fit. */
int pk_join_path(char *out, size_t cap, const char *dir, const char *name);
/* 1 when path is a regular file. */
int pk_file_exists(const char *path);
/* 1 when anything is at path (a FIFO or a directory too): a loader that finds
 * something there reads it and reports what is wrong, rather than "not found". */
int pk_path_exists(const char *path);
/* Write a whole file atomically: into a temporary file beside it, flushed, then
 * renamed over `path`, so an interrupted run never leaves half a file. */
int pk_write_file_atomic(const char *path, const void *data, size_t len);

#endif
