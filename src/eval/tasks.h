/* Synthetic long-context retrieval tasks, the needle-in-a-haystack kind the
 * bundled model was trained to solve (its MODEL_CARD): a pass key, or one to
 * four RULER-style "special magic numbers", hidden at a chosen depth in slices
 * of held-out text, and a question whose answer is the number. A press that
 * drops the needle's entries loses the answer, which is what makes these tasks
 * a test of KV-cache compression. The sentences, number ranges and question
 * forms are those of the model's training recipe (recipe/train_ref.py). */
#ifndef PIKV_EVAL_TASKS_H
#define PIKV_EVAL_TASKS_H

#include "pikv.h"

typedef enum { PK_TASK_PASSKEY, PK_TASK_MAGIC } pk_task_kind;

/* Token ids of the haystack text, from which contexts are cut. */
typedef struct {
    const pikv_tokenizer *tok;
    int32_t *ids;
    int n_ids;
} pk_haystack;

typedef struct {
    int32_t *context;      /* haystack with the needle sentence(s) inside */
    int n_context;
    int32_t *question;
    int n_question;
    char answer[16];       /* the number the answer must start with */
    int needle_start;      /* context index of the first token of the asked needle */
    int needle_len;
} pk_task;

/* Tokenize a haystack file (e.g. data/haystack.txt). */
int pk_haystack_load(pk_haystack *h, const pikv_tokenizer *tok, const char *path);
void pk_haystack_free(pk_haystack *h);

/* Build one task: kind, needles (1-4, magic numbers only), the context length
 * in tokens, the depth of the asked needle (0 = start, 1 = end), and a seed that
 * fixes the numbers, words and haystack slice. */
int pk_task_make(const pk_haystack *h, pk_task_kind kind, int needles, int context_tokens, double depth,
                 uint64_t seed, pk_task *out);
void pk_task_free(pk_task *t);

/* A seeded mix of needle tasks, the same for every press it is given to.
 * Task i asks for a pass key when i % 5 == 0, else for one of i % 5 magic
 * numbers, and is made with seed + i. Its context length and the depth of its
 * asked needle each come from n_tasks evenly spaced slots: task i takes length
 * slot (i * length_stride) % n_tasks and depth slot (i * depth_stride) %
 * n_tasks, so that different strides decorrelate length and depth. */
typedef struct {
    int n_tasks;
    int min_tokens, max_tokens;    /* the lengths of the first and last slot */
    int length_stride;
    double min_depth, depth_span;  /* depths min_depth .. min_depth + depth_span */
    int depth_stride;
    double lone_depth;             /* the depth of the task of a mix of one */
    uint64_t seed;
} pk_task_mix;

/* Build task i (0 <= i < n_tasks) of a mix. */
int pk_task_mix_make(const pk_haystack *h, const pk_task_mix *mix, int i, pk_task *out);

/* 1 when the first number in the generated text is the task's answer. */
int pk_task_correct(const pikv_tokenizer *tok, const pk_task *t, const int32_t *ids, int n);

#endif
