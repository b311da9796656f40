/* Error reporting for the library.
 *
 * Library functions never print and never exit. A failing function records one
 * line, naming the file or parameter at fault, in a thread-local buffer and
 * returns an error status (-1 or NULL). The caller reads it with
 * pikv_last_error() and decides what to do: the CLI prints it and exits non-zero. */
#ifndef PIKV_UTIL_ERROR_H
#define PIKV_UTIL_ERROR_H

#include <stdarg.h>

/* Record the error message (printf-style). Always returns -1 so that callers can
 * write `return pk_fail("...")`. */
int pk_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prefix the current message with "context: ", keeping the detail underneath. */
int pk_fail_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
