/* A minimal test harness: CHECK counts passes and failures, and check_done()
 * prints "NAME: N passed, M failed" (tests/run.sh adds those lines up). */
#ifndef PIKV_TESTS_CHECK_H
#define PIKV_TESTS_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            check_passed++;                                                  \
        } else {                                                             \
            check_failed++;                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

/* Where ../shared (fixtures, tokenizers, data) is: $PIKV_SHARED or ../shared. */
static inline const char *shared_dir(void)
{
    const char *d = getenv("PIKV_SHARED");
    return d && *d ? d : "../shared";
}

/* ||a - b|| / ||b||: how far a result is from its reference. */
static inline double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static inline int check_done(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
