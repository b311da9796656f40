/* The press interface: how a KV-cache compression method plugs into the
 * forward pass.
 *
 * kvpress's contract, with real memory: during a compressing prefill, right
 * after a layer has computed its attention with the full cache, the press looks
 * at that layer (queries, keys, values, attention of an observation window) and
 * decides, per head, which cached entries stay. The dropped entries are removed
 * from the head's arrays and their memory is returned.
 *
 * Most presses are *scorers*: they give every cached entry of every head a
 * score, and the n_kept = floor(L * (1 - ratio)) highest-scored entries of each
 * head stay (ties go to the earlier entry). Wrappers (adakv, pyramidkv,
 * per_layer, chunkkv, composed, decoding) change how scores become keep sets, or
 * combine presses; they implement `compress` themselves. */
#ifndef PIKV_PRESS_PRESS_H
#define PIKV_PRESS_PRESS_H

#include "kv/kvcache.h"
#include "pikv.h"

struct pk_spec;
struct pk_route_table;

/* What a press sees of one layer. The queries are the rows of the forward call
 * that triggered the compression (the context, or context + question in
 * query-aware mode); row t is at absolute position q_pos0 + t. An entry j of a
 * head is visible to query row t when its position is <= q_pos0 + t. */
typedef struct {
    const pikv_config *cfg;
    int layer;
    const float *q;     /* query of row t, head h: q[t * q_stride + h * head_dim] */
    int q_stride;
    int n_q;
    int q_pos0;
    pk_kvcache *kv;     /* the layer's heads: pk_kv_at(kv, layer, h) */
    float scale;        /* the layer's attention scale */
    uint64_t seed;      /* for presses that draw random numbers */
} pk_press_view;

typedef struct pk_press pk_press;

typedef struct {
    /* Score every entry of every head of the layer: scores[h][j] for
     * j < len of head h (higher = keep). NULL for presses that only compress. */
    int (*score)(const pk_press *p, const pk_press_view *v, float **scores);
    /* Compress the layer in place. NULL means: score, then keep each head's
     * top floor(len * (1 - ratio)). */
    int (*compress)(pk_press *p, const pk_press_view *v);
    /* Presses that act while generating (decoding): called after each layer of
     * every forward call once the press is attached to a session. */
    int (*after_call)(pk_press *p, const pk_press_view *v);
    /* Forget per-sequence state (the session was reset). */
    void (*restart)(pk_press *p);
    /* Called on the empty cache before a compressing prefill; returns the
     * chunk size to prefill in (0: all at once), or -1 on error. */
    int (*begin_prefill)(pk_press *p, pk_kvcache *kv);
    /* Query-time routing: the route table the press's last compression left,
     * through which the session's later queries read the cache; NULL when the
     * press does not route (and NULL op for presses that never do). */
    struct pk_route_table *(*routing)(pk_press *p);
    /* Release what params point to, beyond params itself (NULL when nothing). */
    void (*destroy)(pk_press *p);
} pk_press_ops;

enum { PK_PRESS_MAX_INNER = 16 };

struct pk_press {
    const pk_press_ops *ops;
    char name[32];
    double ratio;               /* fraction of entries it removes, for scorers */
    void *params;               /* press-specific, owned */
    pk_press *inner[PK_PRESS_MAX_INNER];
    int n_inner;
};

/* What a press constructor may need besides its spec. */
typedef struct {
    const pikv_model *model;
    const char *model_dir;
} pk_press_env;

/* Build a press from a parsed spec (validating every parameter). */
int pk_press_build(const struct pk_spec *spec, const pk_press_env *env, pk_press **out);
void pk_press_destroy(pk_press *p);

/* Run a press on one layer: its compress, or the default score + top-k. */
int pk_press_compress(pk_press *p, const pk_press_view *v);

/* The default selection shared by scorers and wrappers: keep, in every head,
 * the n_keep[h] highest scores (earlier entry on ties), in storage order. */
int pk_press_keep_top(const pk_press_view *v, float **scores, const int *n_keep);

/* Per-head score buffers for the layer: scores[h] has room for the head's len. */
float **pk_press_alloc_scores(const pk_press_view *v);
void pk_press_free_scores(const pk_press_view *v, float **scores);

/* n_kept for a head of len entries at compression ratio r. */
static inline int pk_press_n_kept(int len, double ratio) { return (int)((double)len * (1.0 - ratio)); }

/* Attention weights of query rows row0..row0+rows-1 over every entry of head h:
 * out[r][j] for r < rows, j < len (0 where an entry is not visible to the row). */
void pk_query_attention(const pk_press_view *v, int head, int row0, int rows, float *out);

/* Allocate a press with zeroed parameters of params_size bytes (none when 0). */
int pk_press_new(const char *name, const pk_press_ops *ops, double ratio, size_t params_size, pk_press **out);
/* The ratio parameter of a press: ratio=R or the bare first value; [0, 1). */
int pk_press_ratio_param(const struct pk_spec *spec, double dflt, double *ratio);
/* Check a scorer's spec: no inner press, only the `allowed` keys (NULL-ended),
 * and read its ratio (default 0). */
int pk_press_scorer_spec(const struct pk_spec *spec, const char *const *allowed, double *ratio);

/* pk_press_new for a wrapper around `inner`, which it takes over (and frees on
 * failure). */
int pk_press_wrap(const char *name, const pk_press_ops *ops, double ratio, size_t params_size, pk_press *inner,
                  pk_press **out);

/* Build the one inner press of a wrapper such as adakv(snapkv); it must be a
 * scorer and must not carry its own ratio (the wrapper's ratio rules). */
int pk_press_inner_scorer(const struct pk_spec *spec, const pk_press_env *env, pk_press **inner);

/* Constructors, one per press file. */
typedef int (*pk_press_builder)(const struct pk_spec *spec, const pk_press_env *env, pk_press **out);
int pk_build_none(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_knorm(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_streaming_llm(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_snapkv(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_tova(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_observed_attention(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_expected_attention(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_random(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_keydiff(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_adakv(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_pyramidkv(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_per_layer(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_chunkkv(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_composed(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_decoding(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_moe_router(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_duo(const struct pk_spec *, const pk_press_env *, pk_press **);
int pk_build_eplb_duo(const struct pk_spec *, const pk_press_env *, pk_press **);

#endif
