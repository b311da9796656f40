/* Whole-file reading and JSON documents with errors that name the file. */
#ifndef PIKV_UTIL_FILE_H
#define PIKV_UTIL_FILE_H

#include <stddef.h>

struct cJSON;

/* Read a whole file into a NUL-terminated buffer (free with pk_free). */
char *pk_read_file(const char *path, size_t *len);
/* Read and parse a JSON file; the error names the file and the byte offset. */
struct cJSON *pk_read_json(const char *path);
/* dir + "/" + name into out; fails if it does not fit. */
int pk_join_path(char *out, size_t cap, const char *dir, const char *name);
int pk_file_exists(const char *path);
/* Write a whole file atomically: into a temporary file beside it, flushed, then
 * renamed over `path`, so an interrupted run never leaves half a file. */
int pk_write_file_atomic(const char *path, const void *data, size_t len);

#endif
