/* The routers of the moe_router press: experts are shards of one
 * head's KV cache, found by balanced spherical k-means over the keys, and a
 * router decides which expert(s) each cached token belongs to and how much of
 * the head's budget each expert gets to keep.
 *
 * Router probabilities: softmax over experts of PK_ROUTER_TEMPERATURE times the
 * cosine between a (unit) key and each (unit) centroid. Cosines lie in [-1, 1],
 * so at temperature 10 a key twice as close in angle to one centroid as to
 * another is clearly, but not absolutely, that centroid's. The hierarchical
 * router multiplies a group probability (softmax over group centroids) by the
 * probability of the expert within its group (softmax over that group's
 * experts), so its probabilities still sum to 1 over all experts.
 *
 * The routers, by PiKVpress's names:
 *   base           each token to its top_k experts by probability, no limit;
 *   topk_balanced  the same, but an expert holds at most
 *                  ceil(capacity * top_k * n / experts) routing slots; a token
 *                  whose choice is full spills to its next choice;
 *   eplb           exact balance: at most ceil(top_k * n / experts) slots per
 *                  expert, so every expert holds the same number (+-1); the
 *                  experts' shards are then placed on workers with EPLB;
 *   adaptive       base routing; an expert's budget follows its tokens' share
 *                  of the observation window's attention;
 *   pikv           base routing; an expert's budget follows how often the
 *                  window queries' own top_k routing picks it (the window
 *                  queries stand in for decode queries);
 *   hierarchical   each token to its best group of experts (k-means into
 *                  `groups` clusters, then each group's members into
 *                  experts / groups), then to its top_k experts inside it.
 * With top_k > 1 a token holds several routing slots (best first) and counts
 * toward each of those experts' budgets. Capacities count routing slots. */
#ifndef PIKV_ROUTER_MOE_ROUTER_H
#define PIKV_ROUTER_MOE_ROUTER_H

#include <stddef.h>


typedef enum {
    PK_ROUTER_BASE,
    PK_ROUTER_TOPK_BALANCED,
    PK_ROUTER_EPLB,
    PK_ROUTER_ADAPTIVE,
    PK_ROUTER_PIKV,
    PK_ROUTER_HIERARCHICAL,
    PK_ROUTER_KINDS
} pk_router_kind;

enum { PK_ROUTER_MAX_EXPERTS = 256 };
#define PK_ROUTER_TEMPERATURE 10.0f

/* The router's spec name ("eplb", ...). */
const char *pk_router_name(pk_router_kind kind);
/* The router called `name`, or -1 when there is none. */
int pk_router_lookup(const char *name);

typedef struct {
    pk_router_kind kind;
    int experts;       /* 1..PK_ROUTER_MAX_EXPERTS */
    int top_k;         /* 1..experts (1..experts / groups for hierarchical) */
    int groups;        /* hierarchical: groups of experts / groups experts */
    double capacity;   /* topk_balanced: capacity factor, >= 1 */
} pk_router_config;

/* How one head's n routable tokens were routed. */
typedef struct {
    pk_router_config cfg;
    int n, dim;
    float *centroids;        /* [experts][dim], unit length */
    float *group_centroids;  /* [groups][dim], hierarchical only (else NULL) */
    float *prob;             /* [n][experts] router probabilities */
    int *slot;               /* [n][top_k]: the token's experts, best first; -1
                                for a slot a balanced router could not fill */
} pk_routing;

/* The n keys (rows of dim floats, any length) a router clusters, reached
 * through the two computations routing needs rather than read, so that they
 * can stay where they are (a GPU's cache) and only centroids, clusters and
 * cosines travel. Both see the keys scaled to unit length as pk_unit_rows
 * scales them, and both return 0 or -1 with pk_fail. */
typedef struct {
    void *ctx;
    int n, dim;
    /* pk_kmeans_balanced of keys which[0..m-1] (ascending; every key when
     * which is NULL, m = n): centroids [k][dim], assign [m]. */
    int (*kmeans)(void *ctx, const int *which, int m, int k, int iterations, float *centroids, int *assign);
    /* out[i][c] = unit key i . centroids[c] for every key, as pk_dot_rows
     * computes it. */
    int (*cosines)(void *ctx, const float *centroids, int count, float *out);
} pk_router_keys;

/* Cluster the n >= 1 keys into the router's experts and route every key.
 * Returns 0, or -1 (pk_fail) when out of memory or when the keys' own
 * computations fail. */
int pk_router_route(const pk_router_config *cfg, const pk_router_keys *keys, pk_routing *out);
void pk_routing_free(pk_routing *r);

/* The top_k experts (best first) that vector x, e.g. a query, is routed to:
 * the router's preference with no capacity. */
void pk_router_route_vector(const pk_routing *r, const float *x, int *experts);

/* The most routing slots an expert may hold out of n tokens: the capacity of
 * topk_balanced and eplb, n (no limit) for the other routers. */
int pk_router_capacity(const pk_router_config *cfg, int n);

/* What the experts' budgets are proportional to: for adaptive, the summed
 * window attention (attention[t]) of each expert's tokens; for pikv, the window
 * queries' hits on it (hits[e]); 1 each for the other routers. */
void pk_router_budget_weights(const pk_routing *r, const float *attention, const int *hits, double *weight);

/* Split `total` into budget[experts] in proportion to weight (equal shares
 * when all weights are 0): floors first, then one more unit to the largest
 * remainders (the lower expert on ties), so the budgets sum to total. */
void pk_router_split_budget(const double *weight, int experts, int total, int *budget);

/* Choose which routed tokens stay. Each expert ranks its tokens by score
 * (higher first; then tiebreak, higher first; then the lower token) and the
 * experts take turns keeping their best token not yet kept, first up to their
 * budgets, then -- when some expert ran out of tokens -- past them, until the
 * budgets' sum is kept (or no token is left). Writes keep[n] (1 = stays) and
 * kept[experts] (tokens each expert kept). Returns 0, or -1 when out of
 * memory. */
int pk_router_select(const pk_routing *r, const float *score, const float *tiebreak, const int *budget,
                     unsigned char *keep, int *kept);

/* The load statistics of a moe_router press's last compression, per (layer,
 * head, expert): index field[pk_router_stats_at(s, layer, head) + expert]. */
typedef struct pk_router_stats {
    int n_layer, n_head, experts;
    unsigned char *recorded;  /* [n_layer]: 1 when the last run compressed the layer */
    int *tokens;              /* routing slots the expert holds (tokens stored) */
    int *selected;            /* window queries whose top_k routing picked it */
    int *budget;              /* entries it was given to keep */
    int *kept;                /* entries it kept */
    /* The EPLB placement of the layer's head * experts + expert shards (router
     * eplb only), with load = kept entries * times selected: the work of
     * decode attention that reads only its top_k experts. */
    int workers, slots;       /* slot p lives on worker p / (slots / workers) */
    int *slot_shard;          /* [n_layer][slots]: the shard in each slot, -1 when not placed */
    float *worker_load;       /* [n_layer][workers] */
} pk_router_stats;

/* Allocate zeroed statistics (nothing recorded, nothing placed). */
int pk_router_stats_init(pk_router_stats *s, int n_layer, int n_head, int experts, int workers);
void pk_router_stats_free(pk_router_stats *s);

static inline size_t pk_router_stats_at(const pk_router_stats *s, int layer, int head)
{
    return ((size_t)layer * (size_t)s->n_head + (size_t)head) * (size_t)s->experts;
}

/* Place a recorded layer's shards on the workers with pk_eplb_rebalance (one
 * slot per shard, rounded up to a multiple of the workers; extra slots
 * replicate the heaviest shards) and record the placement and worker loads. */
int pk_router_place_shards(pk_router_stats *s, int layer);

/* max / mean of counts[n] (1 when all are 0): the imbalance of a load. */
double pk_router_imbalance(const int *counts, int n);


#endif
