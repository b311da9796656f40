/* Quality of a press against no compression on the same inputs:
 *  - retrieval accuracy on seeded needle tasks (eval/retrieval.h);
 *  - perplexity of a haystack continuation read through the compressed cache:
 *    the slice_context tokens before a fixed point of the text are prefilled
 *    and compressed, then the slice_tokens tokens from that point are
 *    teacher-forced through that cache, and each of their passes predicts the
 *    token after it; ppl = exp(mean NLL). The points do not depend on the
 *    context length, so every length scores the same continuations;
 *  - at the same positions, the mean KL divergence KL(p_none || p_press) of the
 *    next-token distributions, and top-1 agreement (same argmax);
 *  - greedy answer agreement: the fraction of answer positions where the two
 *    answers hold the same token, over the longer answer (1 = exact match).
 * Perplexity and KL need no question, so they are query-agnostic in both modes. */
#ifndef PIKV_EVAL_QUALITY_H
#define PIKV_EVAL_QUALITY_H

#include "eval/retrieval.h"

typedef struct {
    double retrieval_acc;  /* fraction of needle tasks answered right */
    double ppl;            /* perplexity of the continuations */
    double kl;             /* mean KL(p_none || p_press), nats */
    double top1_agree;     /* fraction of positions with the same most likely token */
    double answer_agree;   /* greedy answer agreement with no compression */
} pk_quality;

/* Running sums over compared positions (see pk_next_token_compare). */
typedef struct {
    int n;
    double nll_sum, kl_sum;
    int top1_same;
} pk_next_token_stats;

/* Compare next-token distributions at n positions: ref_logits and logits are
 * [n, vocab] (reference = no compression), targets[i] is the token that
 * followed position i. Adds to *acc: the NLL of each target under logits, the
 * KL(softmax(ref) || softmax(logits)) and whether the argmaxes agree. */
void pk_next_token_compare(const float *ref_logits, const float *logits, const int32_t *targets, int n, int vocab,
                           pk_next_token_stats *acc);
double pk_stats_ppl(const pk_next_token_stats *acc);
double pk_stats_kl(const pk_next_token_stats *acc);
double pk_stats_top1(const pk_next_token_stats *acc);

/* Agreement of a greedy answer with the reference answer (see above); two empty
 * answers agree fully. */
double pk_answer_agreement(const int32_t *ref, int n_ref, const int32_t *ids, int n);

/* How much of the reference's quality a press keeps: retrieval, top-1 and
 * answer agreement as compressed / reference, perplexity as reference /
 * compressed; kl is copied (it is already a distance from the reference). A
 * ratio whose denominator is 0 is NaN (nothing to retain). */
pk_quality pk_quality_retained(const pk_quality *q, const pk_quality *ref);

typedef struct {
    const pk_haystack *haystack;
    /* retrieval: tasks of task_min..task_max tokens (pk_retrieval_config) */
    int n_tasks, task_min_tokens, task_max_tokens, query_aware;
    uint64_t seed;
    /* continuations: n_slices points spread evenly over the haystack */
    int n_slices, slice_context, slice_tokens;
} pk_quality_config;

/* The reference run's continuation logits ([n_slices * slice_tokens, vocab]). */
typedef struct {
    float *logits;
    int n_rows, vocab;
} pk_quality_reference;

void pk_quality_reference_free(pk_quality_reference *ref);

/* Measure retrieval accuracy, perplexity, KL and top-1 agreement of the press
 * (NULL = none). When ref->logits is NULL this run becomes the reference: its
 * logits are kept in *ref and it is compared with itself (KL 0, top-1 1).
 * answer_agree is left at 0 for the caller, who holds the answers. `progress`
 * (may be NULL) is called with a short stage name after each task or slice. */
int pk_quality_measure(pikv_session *s, pikv_press *press, const pk_quality_config *c, pk_quality_reference *ref,
                       void (*progress)(const char *stage, int done, int total, void *ctx), void *ctx,
                       pk_quality *out);

#endif
