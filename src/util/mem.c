#include "util/mem.h"
#include "util/error.h"
#include "pikv.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Countdown for failure injection: 0 = off, otherwise the allocation that brings
 * it to zero fails. Tests only; not thread-safe by design. */
static long fail_countdown;

void pk_test_fail_alloc_after(long n) { fail_countdown = n; }

static int injected_failure(void)
{
    return fail_countdown > 0 && --fail_countdown == 0;
}

static void *oom(size_t n, const char *what)
{
    pk_fail("out of memory allocating %zu bytes for %s", n, what);
    return NULL;
}

void *pk_malloc(size_t n, const char *what)
{
    void *p = injected_failure() ? NULL : malloc(n ? n : 1);
    return p ? p : oom(n, what);
}

void *pk_calloc(size_t count, size_t size, const char *what)
{
    if (size && count > SIZE_MAX / size) return oom(SIZE_MAX, what);
    void *p = injected_failure() ? NULL : calloc(count ? count : 1, size ? size : 1);
    return p ? p : oom(count * size, what);
}

void *pk_malloc_array(size_t count, size_t size, const char *what)
{
    if (size && count > SIZE_MAX / size) return oom(SIZE_MAX, what);
    return pk_malloc(count * size, what);
}

void *pk_realloc(void *p, size_t n, const char *what)
{
    void *q = injected_failure() ? NULL : realloc(p, n ? n : 1);
    return q ? q : oom(n, what);
}

char *pk_strdup(const char *s, const char *what)
{
    size_t n = strlen(s) + 1;
    char *d = pk_malloc(n, what);
    if (d) memcpy(d, s, n);
    return d;
}

void pk_free(void *p) { free(p); }

void pikv_free(void *p) { free(p); }
