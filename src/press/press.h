/* The press interface: how a KV-cache compression method plugs into the
 * forward pass.
 *
 * kvpress's contract, with real memory: during a compressing prefill, right
 * after a layer has computed its attention with the full cache, the press looks
 * at that layer (queries, keys, values, attention of an observation window) and
 * decides, per head, which cached entries stay. The dropped entries are removed
 * from the head's arrays and their memory is returned.
 *
 * A press reads a read-only view of the layer and returns, per head, what to
 * keep (a pk_keep_set, kv/kvcache.h); only the cache applies it. Most presses
 * are *scorers*: they give every cached entry of every head a score, and the
 * n_kept = floor(L * (1 - ratio)) highest-scored entries of each head stay
 * (ties go to the earlier entry). Wrappers (adakv, pyramidkv, per_layer,
 * chunkkv, decoding) change how scores become keep sets; composed runs presses
 * one after another. What a press can do beyond that is declared in its caps. */
#ifndef PIKV_PRESS_PRESS_H
#define PIKV_PRESS_PRESS_H

#include "kv/kvcache.h"

#include <stdatomic.h>
#include "model/backend.h"
#include "router/moe_router.h"
#include "pikv.h"

struct pk_spec;
struct pk_route_table;
typedef struct pk_press_measures pk_press_measures;

/* What a press sees of one layer, read-only. The queries are the rows of the
 * forward call that triggered the compression (the context, or context +
 * question in query-aware mode); row t is at absolute position q_pos0 + t. An
 * entry j of a head is visible to query row t when its position is
 * <= q_pos0 + t. */
typedef struct {
    const pikv_config *cfg;
    int layer;
    const float *q;        /* query of row t, head h: q[t * q_stride + h * head_dim] */
    int q_stride;
    int n_q;
    int q_pos0;
    const pk_kvcache *kv;  /* the layer's heads: pk_kv_head_at(kv, layer, h) */
    const pk_backend *backend;  /* for the window attention a press scores from */
    float scale;           /* the layer's attention scale */
    uint64_t seed;         /* for presses that draw random numbers */
    /* PK_PRESS_RECONSTRUCTION_SCORES: recon_scores[layer][head][pos], for
     * pos < recon_len, the largest attention weight any reconstruction query
     * of that head gave the entry at position pos (NULL for other presses). */
    const float *const *const *recon_scores;
    int recon_len;
    /* Where the measures a press scores from are computed (below): NULL for
     * the host, from kv and q; an engine whose cache lives on a device sets
     * its own, so that a PK_PRESS_MEASURED press needs no copy of the cache. */
    const pk_press_measures *measures;
} pk_press_view;

/* The quantities presses score from, for head `head` of the asking view v
 * (its layer, its entries' positions, its queries' positions and scale),
 * computed by whoever holds the entries; ctx is the table's own. Each writes
 * one value per entry of the head, in storage order, and returns 0 or -1
 * with pk_fail. */
struct pk_press_measures {
    void *ctx;
    /* out[j] = the sum, over query rows row0..row0+rows-1, of the attention
     * weight the row gives entry j (its softmax over the head's entries that
     * it can see), summed in double. */
    int (*attention_sums)(void *ctx, const pk_press_view *v, int head, int row0, int rows, double *out);
    /* out[j] = ||k_j||, summed in double. */
    int (*key_norms)(void *ctx, const pk_press_view *v, int head, float *out);
    /* Expected attention's logits: with mu and S the mean and covariance of
     * the query rows from first_row on, logit[j] = k_j.mu / sqrt(d) +
     * k_j'S k_j / (2d), and value_sq[j] = ||v_j||^2, all in double. */
    int (*expected_logits)(void *ctx, const pk_press_view *v, int head, int first_row, double *logit,
                           double *value_sq);
    /* For a press that clusters keys (moe_router): balanced spherical
     * k-means (router/kmeans.h) of the unit keys of the head's entries
     * entries[0..m-1] (ascending storage indices) into k clusters, bit for
     * bit as pk_kmeans_balanced computes it: centroids [k][head_dim] and
     * assign [m]. */
    int (*kmeans)(void *ctx, const pk_press_view *v, int head, const int *entries, int m, int k, int iterations,
                  float *centroids, int *assign);
    /* out[i][c] = the cosine of the key of entry entries[i] to unit centroid
     * c, for c < count: the unit key's dot product with it, as pk_dot_rows
     * computes it. */
    int (*key_cosines)(void *ctx, const pk_press_view *v, int head, const int *entries, int m,
                       const float *centroids, int count, float *out);
    /* out[r][d]: the head's query rows row0..row0+rows-1. */
    int (*queries)(void *ctx, const pk_press_view *v, int head, int row0, int rows, float *out);
};

/* The host's measures, computed from the rows and queries of the view passed
 * as ctx (what a view without measures uses). */
extern const pk_press_measures pk_press_host_measures;

/* The measures of head h of v, from v's measures or the host's. */
int pk_press_attention_sums(const pk_press_view *v, int head, int row0, int rows, double *out);
int pk_press_key_norms(const pk_press_view *v, int head, float *out);
int pk_press_expected_logits(const pk_press_view *v, int head, int first_row, double *logit, double *value_sq);
int pk_press_kmeans(const pk_press_view *v, int head, const int *entries, int m, int k, int iterations,
                    float *centroids, int *assign);
int pk_press_key_cosines(const pk_press_view *v, int head, const int *entries, int m, const float *centroids,
                         int count, float *out);
int pk_press_queries(const pk_press_view *v, int head, int row0, int rows, float *out);

typedef struct pk_press pk_press;

/* What a press can do beyond choosing entries after a prefill, declared when
 * it is built so that the engine never has to discover it by trying. */
enum {
    PK_PRESS_SEQUENCE = 1 << 0,        /* its parts run in order, each on what the last kept (composed) */
    PK_PRESS_WHILE_DECODING = 1 << 1,  /* acts on every later call (decoding) */
    PK_PRESS_ROUTES_QUERIES = 1 << 2,  /* later queries read the cache through its route table */
    PK_PRESS_CHUNKED_PREFILL = 1 << 3, /* shapes the empty cache and prefills in chunks (duo prefill_chunk) */
    PK_PRESS_PER_RUN_STATE = 1 << 4,   /* keeps state of the sequence it runs on (decoding's queries,
                                          moe_router's statistics and route table): one session at a time */
    PK_PRESS_RECONSTRUCTION_SCORES = 1 << 5, /* the engine scores the context by reconstruction first (kvzip) */
    PK_PRESS_QUERY_FREE = 1 << 6,      /* decides without the call's queries (so it composes with kvzip,
                                          which decides after the prefill, when they are gone) */
    PK_PRESS_ENTRY_FREE = 1 << 7,      /* decides from the heads' lengths and positions alone, reading no
                                          key, value or query (so an engine whose cache lives elsewhere
                                          need not copy it out for the press) */
    PK_PRESS_MEASURED = 1 << 8         /* reads keys, values and queries only through the view's measures
                                          (pk_press_attention_sums, ...), which such an engine computes
                                          where the cache is; an entry-free press is measured too */
};

typedef struct {
    /* Score every entry of every head of the layer: scores[h][j] for
     * j < len of head h (higher = keep). NULL for presses that only select. */
    int (*score)(const pk_press *p, const pk_press_view *v, float **scores);
    /* Decide what the layer keeps (out was reset to "keep everything" with
     * room for the longest head). NULL means: score, then keep each head's
     * top floor(len * (1 - ratio)). A press may update its own statistics. */
    int (*select)(pk_press *p, const pk_press_view *v, pk_keep_set *out);
    /* PK_PRESS_WHILE_DECODING: after each layer of every call; returns 1 when
     * it filled `out` with a decision, 0 when the layer stays as it is. */
    int (*decode_step)(pk_press *p, const pk_press_view *v, pk_keep_set *out);
    /* PK_PRESS_WHILE_DECODING: whether the next decode_step of this layer,
     * on a call of n_q rows, will decide (and so read the layer's entries):
     * an engine whose cache lives on a device copies the layer out only then. */
    int (*decides_next)(const pk_press *p, int layer, int n_q);
    /* Forget per-sequence state (the session was reset). */
    void (*restart)(pk_press *p);
    /* PK_PRESS_ROUTES_QUERIES: the route table the last compression left. */
    struct pk_route_table *(*routing)(pk_press *p);
    /* Release what params point to, beyond params itself (NULL when nothing). */
    void (*destroy)(pk_press *p);
} pk_press_ops;

enum { PK_PRESS_MAX_INNER = 16 };

struct pk_press {
    const pk_press_ops *ops;
    char name[32];
    double ratio;               /* fraction of entries it removes, for scorers */
    unsigned caps;              /* PK_PRESS_* */
    int prefill_chunk;          /* PK_PRESS_CHUNKED_PREFILL: tokens per prefill call */
    /* PK_PRESS_RECONSTRUCTION_SCORES: the prompt asking to repeat the context
     * (token ids, owned) and the context tokens per reconstruction chunk. */
    int32_t *recon_prompt;
    int n_recon_prompt, recon_chunk;
    int n_layer, n_head;        /* the model shape it was built for */
    /* PK_PRESS_PER_RUN_STATE: the session using it (NULL when none), and what
     * to tell that session when the press is destroyed first. */
    _Atomic(void *) owner;
    void (*forget)(void *owner, const pk_press *p);
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

/* One press's decision for a layer (not for PK_PRESS_SEQUENCE presses, whose
 * parts the engine runs one after another): its select, or the default. */
int pk_press_select(pk_press *p, const pk_press_view *v, pk_keep_set *out);
/* The default selection of a scorer at a given ratio: score, then keep each
 * head's top floor(len * (1 - ratio)). */
int pk_press_select_top(const pk_press *scorer, const pk_press_view *v, double ratio, pk_keep_set *out);

/* The selection shared by scorers and wrappers: keep, in every head, the
 * n_keep[h] highest scores (earlier entry on ties), in storage order. */
int pk_press_keep_top(const pk_press_view *v, float **scores, const int *n_keep, pk_keep_set *out);

/* pk_press_keep_top with every head's budget at a ratio: its top
 * floor(len * (1 - ratio)). The second half of pk_press_select_top, for
 * scores computed elsewhere (the GPU's). */
int pk_press_keep_top_at_ratio(const pk_press_view *v, float **scores, double ratio, pk_keep_set *out);

/* Per-head score buffers for the layer: scores[h] has room for the head's len. */
float **pk_press_alloc_scores(const pk_press_view *v);
void pk_press_free_scores(const pk_press_view *v, float **scores);

/* The entries of head h of the view. */
static inline const pk_kv_head *pk_press_head(const pk_press_view *v, int h) { return pk_kv_head_at(v->kv, v->layer, h); }

/* Head h's keys (values != 0: values) as float rows [len, head_dim], the
 * values attention reads: in place for an f32 cache, else decoded into
 * scratch (from pk_press_alloc_rows). */
static inline const float *pk_press_rows(const pk_press_view *v, int h, int values, float *scratch)
{
    return pk_kv_rows(v->kv, pk_press_head(v, h), values, 0, pk_press_head(v, h)->len, scratch);
}
/* Scratch for pk_press_rows: room for the layer's longest head (pk_free it). */
float *pk_press_alloc_rows(const pk_press_view *v);

/* n_kept for a head of len entries at compression ratio r. */
static inline int pk_press_n_kept(int len, double ratio) { return (int)((double)len * (1.0 - ratio)); }

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

/* A composition of presses already built (taken over, also on failure): each
 * runs on what the ones before it kept. Refuses parts it cannot run in
 * order, naming them. */
int pk_press_compose(const char *name, pk_press **parts, int n_parts, pk_press **out);

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
int pk_build_kvzip(const struct pk_spec *, const pk_press_env *, pk_press **);

/* The press of a composition (or the press itself) that needs reconstruction
 * scores, NULL when none does. */
const pk_press *pk_press_reconstruction_part(const pk_press *p);

/* The statistics of a moe_router press's last run; NULL for any other press
 * or before its first compression. */
const pk_router_stats *pk_moe_router_stats(const pk_press *p);

#endif
