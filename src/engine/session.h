/* A session: one sequence run through a model. It owns its parts as separate
 * objects -- the forward state (cache, position, scratch), the presses acting
 * on it, query-time routing, the placement of decode attention on workers, and
 * a mark to rewind to -- and the engine is what ties them together: prefill
 * with a press (engine/prefill.c), generation, the question pipeline. */
#ifndef PIKV_ENGINE_SESSION_H
#define PIKV_ENGINE_SESSION_H

#include "engine/device.h"
#include "model/forward.h"
#include "press/press.h"
#include "router/placement.h"

/* Reconstruction scores being recorded (PK_PRESS_RECONSTRUCTION_SCORES):
 * scores[layer][head][pos] for the first len positions, the largest weight
 * any query from row first_row on of a reconstruction call gave that entry,
 * taken from the forward pass's own attention (pk_recon_attention). */
typedef struct {
    float ***scores;
    int len, first_row;
    float **slot_max;       /* scratch [n_head][n_positions]: one layer's largest weights, in slot order */
} pk_recon_record;

/* Presses acting on the session's calls. */
typedef struct {
    pk_press *compressing;  /* compresses each layer during the current call */
    pk_recon_record *recording; /* records reconstruction scores during the current call */
    pk_press *attached;     /* acts after each layer of every call (decoding presses) */
    pk_press *claimed;      /* a press with per-run state this session holds (pk_session_claim) */
    pk_keep_set keep;       /* scratch for one layer's decision */
    pikv_press_stats stats;
} pk_session_presses;

/* Query-time routing (route=1): the table later queries are routed through. */
typedef struct {
    struct pk_route_table *table;
    int *idx;               /* [n_threads, n_positions]: the entries one routed query reads */
} pk_session_routing;

/* Decode attention on placed workers (pikv_session_set_workers). */
typedef struct {
    int workers;                 /* 0: heads in parallel, unplaced */
    pk_place_policy policy;
    pk_placement plan;
    float *scores;               /* [workers, n_positions] */
    int *head_len;               /* [n_head]: one layer's head lengths, to place */
    float *partials;             /* per work item: max, sum, then head_dim weighted values */
    int cap_partials;
    double imbalance_sum;        /* sum over placed layer steps of max/mean worker load */
    long imbalance_steps;
} pk_session_workers;

/* The cache's state to rewind to (pikv_session_mark). */
typedef struct {
    int marked, pos;
    pk_kv_snapshot snapshot;
    unsigned epoch;
} pk_session_mark;

/* The device engine the session's calls go to instead of the CPU forward
 * pass (pikv_session_params.device). */
typedef struct {
    const pk_device_ops *ops;  /* NULL: the CPU engine */
    void *engine;
} pk_session_device;

struct pikv_session {
    const pikv_model *model;
    pk_session_device device;
    pk_forward fwd;
    pk_session_presses presses;
    pk_session_routing routing;
    pk_session_workers workers;
    pk_session_mark mark;
};

/* 0 for a session on the CPU; for one on a device, the error "<what> is
 * not on the <device> engine" and -1. */
int pk_session_cpu_only(const pikv_session *s, const char *what);

/* How the last prefill's press ran on the session's device engine (what it
 * copied to the host, where it was applied); "" on the CPU or without one. */
const char *pk_session_press_note(const pikv_session *s);

/* On a device: how many sequences of the prompt, compressed by press and
 * then decoding n_gen tokens each, fit `budget` bytes of its KV memory, and
 * their decode speed together (pk_device_ops.capacity). The session's own
 * sequence is emptied. On the CPU, -1 with an error saying so. */
int pk_session_capacity(pikv_session *s, const int32_t *ids, int n, pk_press *press, int n_gen, size_t budget,
                        pk_device_capacity *out);

/* Like pikv_forward, but write the final hidden states (after ln_f) of every
 * row to hidden [n, C] instead of logits. */
int pk_forward_hidden(pikv_session *s, const int32_t *ids, int n, float *hidden);
/* Run n tokens as independent windows of `window` tokens after the cache,
 * with the session's hooks, leaving the cache as it was
 * (pk_forward_run_windows). */
int pk_forward_windows(pikv_session *s, const int32_t *ids, int n, int window);

/* Limit one head's attention to a streaming window without dropping anything
 * (recent = 0 lifts it): what Duo calibration measures a head by. */
int pk_session_set_window(pikv_session *s, int layer, int head, int sink, int recent);

/* A press with per-run state (PK_PRESS_PER_RUN_STATE) serves one session at a
 * time: claim it for s (releasing any other press s holds), or fail when
 * another session holds it. Reset and free release it. */
int pk_session_claim(pikv_session *s, pk_press *p);
void pk_session_release(pikv_session *s);

/* The attention hook while reconstructing (engine/reconstruct.c): run the
 * backend's attention of layer's T rows recording the largest weights of the
 * rows from first_row on into rec; 1 when it ran, 0 when no row is recorded
 * (the backend's plain attention runs), -1 on error. */
int pk_recon_attention(pk_recon_record *rec, pk_forward *f, int layer, int T);
/* Prefill ids with the full cache (logits of the last row as pikv_prefill
 * gives them), score the context by reconstruction, then compress every
 * layer with the press, which has PK_PRESS_RECONSTRUCTION_SCORES. */
int pk_prefill_reconstructed(pikv_session *s, const int32_t *ids, int n, pk_press *press, float *logits);

/* Attention variants of the engine, in their own files. */
int pk_routed_attention(pikv_session *s, int layer, int T);
int pk_placed_attention(pikv_session *s, int layer);
/* The attention mass that full attention of q over the first `visible`
 * entries of kh puts on the entries not listed in idx (n ascending indices):
 * what a routed query missed. P is scratch for `visible` weights. */
double pk_route_missed_mass(const pk_kvcache *kv, const pk_kv_head *kh, const float *q, int32_t qpos, int visible,
                            const int *idx, int n, float scale, float *P);

#endif
