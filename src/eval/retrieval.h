/* Retrieval accuracy of a press on a fixed, seeded set of needle tasks. */
#ifndef PIKV_EVAL_RETRIEVAL_H
#define PIKV_EVAL_RETRIEVAL_H

#include "eval/tasks.h"

typedef struct {
    int n_tasks;            /* tasks alternate: pass key, then 1..4 magic numbers */
    int min_tokens, max_tokens;  /* context lengths, spread evenly over the tasks */
    int query_aware;
    uint64_t seed;
    int max_new_tokens;     /* answer length (default 12) */
} pk_retrieval_config;

typedef struct {
    int n_tasks, n_correct;
    double accuracy;
    double kv_kept;         /* mean over tasks of bytes after / bytes before compression */
    double seconds;
    int routed;                  /* the press routes queries (route=1): */
    pikv_routing_stats routing;  /* what they read and missed over these tasks */
} pk_retrieval_result;

/* The i-th task of a configuration (what pk_eval_retrieval runs). */
int pk_retrieval_task(const pk_haystack *h, const pk_retrieval_config *c, int i, pk_task *out);

/* Answer every task with the press (NULL = no compression) and count the right
 * answers. `progress` (may be NULL) is called after each task. */
int pk_eval_retrieval(pikv_session *s, pikv_press *press, const pk_haystack *h, const pk_retrieval_config *c,
                      void (*progress)(int done, int total, void *ctx), void *ctx, pk_retrieval_result *out);

#endif
