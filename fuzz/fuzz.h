/* What the fuzz targets share: where the bundled model is, and how a target
 * reports a broken invariant (libFuzzer records the input of any abort). */
#ifndef PIKV_FUZZ_FUZZ_H
#define PIKV_FUZZ_FUZZ_H

#include "pikv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bundled model's directory: $PIKV_MODEL, else models/pikv-ref-14m under
 * the current directory (the fuzzers run from the repository root). */
static inline const char *fuzz_model_dir(void)
{
    const char *env = getenv("PIKV_MODEL");
    return env && *env ? env : "models/pikv-ref-14m";
}

/* Stop the run when an invariant fails, so that the input is kept as a crash. */
#define FUZZ_ASSERT(cond, ...)                                                   \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            abort();                                                             \
        }                                                                        \
    } while (0)

/* After a call failed: the message must be there, and on one line. */
static inline void fuzz_check_error(void)
{
    const char *msg = pikv_last_error();
    FUZZ_ASSERT(strcmp(msg, "unknown error") != 0 && strchr(msg, '\n') == NULL, "message '%s'", msg);
}

#endif
