#include "util/error.h"
#include "pikv.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

/* Messages quote user input (names, values): control bytes there would break
 * the one-line rule, so they are shown as '?'. */
static void keep_on_one_line(char *text)
{
    for (unsigned char *c = (unsigned char *)text; *c; c++)
        if (*c < 0x20 || *c == 0x7f) *c = '?';
}

int pk_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    keep_on_one_line(last_error);
    return -1;
}

int pk_fail_prefix(const char *fmt, ...)
{
    char detail[sizeof last_error];
    memcpy(detail, last_error, sizeof detail);
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof last_error, "%.300s: %.700s", prefix, detail);
    keep_on_one_line(last_error);
    return -1;
}

const char *pikv_last_error(void) { return last_error[0] ? last_error : "unknown error"; }

void pikv_clear_error(void) { last_error[0] = '\0'; }
