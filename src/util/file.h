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
/* The same from an open descriptor (standard input, a pipe), read to its end;
 * `name` names it in errors. */
char *pk_read_stream(int fd, const char *name, size_t max_bytes, size_t *len);
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
/* What writing to an output path does (pk_output_kind's values): a new file,
 * a regular file replaced by rename, or a device/FIFO/socket (also through a
 * symbolic link, e.g. /dev/stdout) written as it is. Any other symbolic link is
 * refused: replacing it would break the link, writing through it would not be
 * atomic. */
enum { PK_OUT_NEW = 1, PK_OUT_REPLACE = 2, PK_OUT_STREAM = 3 };
int pk_output_kind(const char *path);
/* Check, before a long run, that an output file or directory can be written:
 * the file's kind is acceptable and its directory writable; the directory
 * exists, is one and is writable. -1 with an error naming the path otherwise. */
int pk_check_output_file(const char *path);
int pk_check_output_dir(const char *dir);
/* Write a whole file atomically: into a temporary file beside it (registered for
 * cleanup while it exists), flushed, then renamed over `path`, so an
 * interrupted run never leaves half a file. A device or FIFO is written
 * directly; a symbolic link to a file is refused (see pk_output_kind). */
int pk_write_file_atomic(const char *path, const void *data, size_t len);
/* Move the files `names` from the staging directory into dir, after checking
 * that every target can be replaced: a set of files replaces the old set as a
 * unit (the staging directory is left for the caller to remove). */
int pk_publish_dir(const char *staging, const char *dir, const char *const *names, int n);

/* Paths to remove if the process is killed by a signal: temporary files and
 * staging directories. pk_cleanup_now is async-signal-safe; the CLI calls it
 * from its SIGINT/SIGTERM handler. register returns a slot (or -1 when the
 * table is full or the path too long: then it is not cleaned up). */
int pk_cleanup_register(const char *path, int is_dir);
void pk_cleanup_unregister(int slot);
void pk_cleanup_now(void);

#endif
