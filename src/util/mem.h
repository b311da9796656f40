/* Allocation for the whole library goes through these wrappers so that an
 * allocation failure is reported the same way everywhere ("out of memory
 * allocating N bytes for WHAT") and so that tests can make the N-th allocation
 * fail (pk_test_fail_alloc_after) to check that every error path frees what it
 * took. Sizes are checked for overflow before they are multiplied. */
#ifndef PIKV_UTIL_MEM_H
#define PIKV_UTIL_MEM_H

#include <stddef.h>

void *pk_malloc(size_t n, const char *what);
void *pk_calloc(size_t count, size_t size, const char *what);
void *pk_realloc(void *p, size_t n, const char *what);
/* count * size, or 0 with an error set if it overflows. */
void *pk_malloc_array(size_t count, size_t size, const char *what);
char *pk_strdup(const char *s, const char *what);
void pk_free(void *p);

/* Tests only: make the n-th allocation from now on fail (0 turns it off). Not
 * part of the public API; test programs include this header. */
void pk_test_fail_alloc_after(long n);

#endif
