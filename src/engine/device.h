/* A session on another engine than the CPU's forward pass (the GPU), behind
 * the same public calls.
 *
 * The CPU library does not link any device engine: an engine registers its
 * operations here (pk_device_register) from the build that has it, and a
 * session made with pikv_session_params.device = its name sends its calls to
 * them. What a device does not do (placed workers, marks, reading the cache's
 * rows) the session refuses by name, so that a caller learns it at once and
 * never reads an empty CPU cache by mistake.
 *
 * A device engine holds one sequence, like a session; it owns its cache and
 * applies a press to it itself (the decision may still be made on the host
 * by the press's own code). */
#ifndef PIKV_ENGINE_DEVICE_H
#define PIKV_ENGINE_DEVICE_H

#include "press/press.h"

/* Sequences of one prompt that a KV budget holds on a device, and their
 * decode speed all together (pk_session_capacity). */
typedef struct {
    int admitted;            /* floor(budget / per_seq_bytes) */
    int ran;                 /* how many of them were decoded together (at most the device's limit) */
    size_t budget_bytes, per_seq_bytes;
    double decode_tok_s;     /* tokens per second of all `ran` sequences together */
} pk_device_capacity;

typedef struct pk_device_ops {
    const char *name;   /* what pikv_session_params.device calls it: "cuda" */
    /* An engine for one sequence of model m; NULL with the error recorded. */
    void *(*open)(const pikv_model *m, const pikv_session_params *p);
    void (*close)(void *engine);
    /* Forget the sequence; its cache's memory goes back to the device. */
    int (*reset)(void *engine);
    /* pikv_prefill on an empty sequence: the prompt, then press (NULL: none)
     * compressing every layer; st gets the press's bytes and seconds. A
     * press that acts while decoding (which the session has attached) is
     * attached here to a sequence holding every token it has seen, and sees
     * the prompt's rows. */
    int (*prefill)(void *engine, const int32_t *ids, int n, pk_press *press, float *logits, pikv_press_stats *st);
    /* pikv_forward: n tokens after what the sequence holds; `attached` (the
     * session's press that acts while decoding, or NULL) acts on every layer
     * after them, and st gains its bytes and seconds. */
    int (*forward)(void *engine, const int32_t *ids, int n, pk_press *attached, float *logits, int all_logits,
                   pikv_press_stats *st);
    /* `steps` greedy tokens after token `first` (the first largest logit
     * each time), chosen on the device: chosen [steps]. */
    int (*greedy)(void *engine, int32_t first, int steps, int32_t *chosen);
    int (*position)(const void *engine);
    size_t (*kv_bytes)(const void *engine);
    int (*kv_len)(const void *engine, int layer, int head);
    /* How the cache stores keys and values. */
    pikv_kv_type (*kv_type)(const void *engine);
    /* One line on how the last prefill's press ran (e.g. what it copied to
     * the host), "" when there was none. */
    const char *(*press_note)(const void *engine);
    /* Capacity of `budget` KV bytes for sequences of the prompt compressed
     * by press, each then decoding n_gen tokens; leaves the engine's own
     * sequence empty. */
    int (*capacity)(void *engine, const int32_t *ids, int n, pk_press *press, int n_gen, size_t budget,
                    pk_device_capacity *out);
} pk_device_ops;

/* Make a device engine available by its name (the build that has it calls
 * this once, before sessions are made). At most a few can be registered. */
int pk_device_register(const pk_device_ops *ops);
/* The engine registered under name, or NULL with an error saying the build
 * has none by that name. */
const pk_device_ops *pk_device_find(const char *name);

#endif
