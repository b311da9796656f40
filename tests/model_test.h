/* For tests that run the bundled model through the public API. */
#ifndef PIKV_TESTS_MODEL_TEST_H
#define PIKV_TESTS_MODEL_TEST_H

#include "check.h"
#include "pikv.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Decoding token by token against one prefill of the same T tokens: the
 * largest relative L2 distance between the logits of rows split..T-1, or -1
 * when memory runs out. The session is left at position T. */
static inline double decode_vs_prefill(pikv_session *s, int V, int T, int split)
{
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    float *full = malloc((size_t)T * V * sizeof *full), *step = malloc((size_t)V * sizeof *step);
    double worst = -1;
    if (ids && full && step) {
        for (int i = 0; i < T; i++) ids[i] = (i * 37 + 11) % V;
        pikv_session_reset(s);
        pikv_forward(s, ids, T, full, 1);
        pikv_session_reset(s);
        pikv_forward(s, ids, split, NULL, 0);
        worst = 0;
        for (int t = split; t < T; t++) {
            pikv_forward(s, &ids[t], 1, step, 0);
            worst = fmax(worst, rel_l2(step, full + (size_t)t * V, (size_t)V));
        }
    }
    free(ids);
    free(full);
    free(step);
    return worst;
}

#endif
