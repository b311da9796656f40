/* The moe_router press and what it is made of: balanced spherical
 * k-means on hand-made keys; every router on a synthetic layer built entry by
 * entry (keys drawn around four directions, queries leaning towards one of
 * them), checking budgets, balance, capacities, sinks and window, exact
 * per-head lengths and released memory; bad specs; and one run on the bundled
 * model. */
#include "check.h"
#include "util/mem.h"
#include "press_test.h"
#include "eval/tasks.h"
#include "kv/kvcache.h"
#include "pikv.h"
#include "press/press.h"
#include "press/spec.h"
#include "router/kmeans.h"
#include "router/moe_router.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"

enum { N_LAYER = 2, N_HEAD = 2, HEAD_DIM = 8, ROW_WIDTH = N_HEAD * HEAD_DIM, DIRECTIONS = 4 };

/* A deterministic number in [-1, 1) from a 64-bit LCG state. */
static float next_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) / (double)(1ULL << 24)) * 2.f - 1.f;
}

/* ---- k-means ----------------------------------------------------------- */

/* Ten unit-ish points, alternating between two directions (x and y axes, a
 * little noise): k = 2 must separate them, five and five, and twice the same. */
static void check_kmeans_two_clusters(void)
{
    enum { N = 10, DIM = 4 };
    float points[N * DIM];
    uint64_t rng = 7;
    for (int i = 0; i < N; i++) {
        for (int d = 0; d < DIM; d++) points[i * DIM + d] = 0.05f * next_uniform(&rng);
        points[i * DIM + (i % 2)] += 1.f;
    }
    pk_unit_rows(points, N, DIM);
    float centroids[2 * DIM], again[2 * DIM];
    int assign[N], assign_again[N];
    CHECK(pk_kmeans_balanced(points, N, DIM, 2, PK_KMEANS_ITERATIONS, centroids, assign) == 0, "k-means: %s",
          pikv_last_error());
    int separated = assign[0] != assign[1];
    for (int i = 2; i < N; i++) separated &= assign[i] == assign[i % 2];
    CHECK(separated, "k-means puts the x points and the y points in two different clusters");
    for (int c = 0; c < 2; c++) {
        const float *centroid = centroids + c * DIM;
        const int axis = assign[0] == c ? 0 : 1;
        double norm = 0;
        for (int d = 0; d < DIM; d++) norm += centroid[d] * centroid[d];
        CHECK(fabs(norm - 1) < 1e-5 && centroid[axis] > 0.99f, "centroid %d is unit (%g) and on axis %d (%g)", c,
              norm, axis, centroid[axis]);
    }
    pk_kmeans_balanced(points, N, DIM, 2, PK_KMEANS_ITERATIONS, again, assign_again);
    CHECK(memcmp(centroids, again, sizeof centroids) == 0 && memcmp(assign, assign_again, sizeof assign) == 0,
          "k-means is deterministic");
}

/* Eleven points in one tight blob, three clusters: plain k-means could put
 * them all in one; the balanced assignment caps each at ceil(11/3) = 4, so
 * the sizes are 4, 4, 3. Two points and three clusters: one each at most. */
static void check_kmeans_balanced(void)
{
    enum { N = 11, DIM = 3 };
    float points[N * DIM];
    uint64_t rng = 11;
    for (int i = 0; i < N; i++) {
        points[i * DIM] = 1.f;
        points[i * DIM + 1] = 0.01f * next_uniform(&rng);
        points[i * DIM + 2] = 0.01f * next_uniform(&rng);
    }
    pk_unit_rows(points, N, DIM);
    float centroids[3 * DIM];
    int assign[N], size[3] = {0, 0, 0};
    pk_kmeans_balanced(points, N, DIM, 3, PK_KMEANS_ITERATIONS, centroids, assign);
    for (int i = 0; i < N; i++) size[assign[i]]++;
    CHECK(size[0] <= 4 && size[1] <= 4 && size[2] <= 4 && size[0] + size[1] + size[2] == N,
          "balanced k-means sizes %d %d %d, each at most 4", size[0], size[1], size[2]);
    int few[2];
    pk_kmeans_balanced(points, 2, DIM, 3, PK_KMEANS_ITERATIONS, centroids, few);
    CHECK(few[0] != few[1] && few[0] >= 0 && few[1] >= 0, "two points, three clusters: clusters %d and %d", few[0],
          few[1]);
}

/* ---- a synthetic layer --------------------------------------------------- */

/* The direction (0..3) of the key at position j: shuffled, not in blocks. */
static int direction_of(int j) { return (j * 7 + 3) % DIRECTIONS; }

/* Two layers of two heads, `len` entries at positions 0..len-1 whose keys lie
 * around axis 2 * direction_of(j) (length 2, a little noise) with random
 * values; `n_q` query rows, the first at position q_pos0, leaning towards
 * direction 0 (so window attention favours it). Scale 1; the view looks at
 * layer 0. */
static int layer_init(test_layer *t, int len, int n_q, int q_pos0)
{
    if (test_layer_init(t, N_LAYER, N_HEAD, HEAD_DIM, len, n_q, q_pos0, ROW_WIDTH)) return -1;
    uint64_t rng = 42;
    for (int l = 0; l < N_LAYER; l++)
        for (int h = 0; h < N_HEAD; h++) {
            pk_kv_head *kh = pk_kv_at(&t->kv, l, h);
            float *keys = (float *)kh->k, *values = (float *)kh->v; /* the test cache stores f32 */
            for (int j = 0; j < len; j++) {
                for (int d = 0; d < HEAD_DIM; d++) {
                    keys[j * HEAD_DIM + d] = 0.2f * next_uniform(&rng);
                    values[j * HEAD_DIM + d] = next_uniform(&rng);
                }
                keys[j * HEAD_DIM + 2 * direction_of(j)] += 2.f;
            }
        }
    for (int r = 0; r < n_q; r++)
        for (int h = 0; h < N_HEAD; h++) {
            float *q = t->q + (size_t)r * ROW_WIDTH + (size_t)h * HEAD_DIM;
            for (int d = 0; d < HEAD_DIM; d++) q[d] = 0.3f * next_uniform(&rng);
            q[0] += 1.5f;
        }
    return 0;
}

/* Compress both layers of t with press. */
static int compress_layers(pk_press *press, test_layer *t, const char *what)
{
    int rc = 0;
    for (int l = 0; l < N_LAYER && rc == 0; l++) {
        t->view.layer = l;
        rc = layer_compress(press, t);
    }
    t->view.layer = 0;
    CHECK(rc == 0, "%s: compress failed: %s", what, pikv_last_error());
    return rc;
}

/* Whether head (layer, head) holds position pos. */
static int holds_position(const test_layer *t, int layer, int head, int pos)
{
    const pk_kv_head *kh = pk_kv_head_at(&t->kv, layer, head);
    for (int j = 0; j < kh->len; j++)
        if (kh->pos[j] == pos) return 1;
    return 0;
}

/* What every run must satisfy: each head holds exactly n_kept entries in
 * ascending positions, with its sinks and window, and no spare capacity. */
static void expect_exact_heads(const test_layer *t, int len, int n_kept, int sink, int window, const char *what)
{
    for (int l = 0; l < N_LAYER; l++)
        for (int h = 0; h < N_HEAD; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&t->kv, l, h);
            CHECK(kh->len == n_kept, "%s: layer %d head %d keeps %d, want %d", what, l, h, kh->len, n_kept);
            CHECK(kh->cap == kh->len, "%s: layer %d head %d cap %d for len %d (memory not released)", what, l, h,
                  kh->cap, kh->len);
            int ascending = 1, fixed_kept = 1;
            for (int j = 1; j < kh->len; j++) ascending &= kh->pos[j] > kh->pos[j - 1];
            for (int p = 0; p < sink; p++) fixed_kept &= holds_position(t, l, h, p);
            for (int p = len - window; p < len; p++) fixed_kept &= holds_position(t, l, h, p);
            CHECK(ascending, "%s: layer %d head %d positions ascend", what, l, h);
            CHECK(fixed_kept, "%s: layer %d head %d keeps sinks 0..%d and window %d..%d", what, l, h, sink - 1,
                  len - window, len - 1);
        }
    CHECK(pk_kv_bytes(&t->kv) == (size_t)N_LAYER * N_HEAD * (size_t)n_kept * pk_kv_entry_bytes(&t->kv),
          "%s: %zu bytes held for %d entries per head", what, pk_kv_bytes(&t->kv), n_kept);
}

static int sum_of(const int *x, int n)
{
    int s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s;
}

static int argmax_of(const int *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Every router on the synthetic layer: L = 200 entries, sink 4, window 16,
 * ratio 0.5 -> n_kept 100 per head, 180 routable tokens, a routed budget of
 * 80 split over 4 experts, top_k 2 (360 routing slots). */
static void check_router(const char *router)
{
    enum { L = 200, SINK = 4, WINDOW = 16, E = 4, TOP_K = 2, N_KEPT = 100, ROUTABLE = L - SINK - WINDOW };
    char spec[160], what[64];
    snprintf(spec, sizeof spec, "moe_router:router=%s,experts=%d,top_k=%d,ratio=0.5,sink=%d,window=%d", router, E,
             TOP_K, SINK, WINDOW);
    snprintf(what, sizeof what, "router %s", router);
    test_layer t;
    if (layer_init(&t, L, L, 0)) return;
    pk_press *press = press_from(spec, NULL);
    if (press && compress_layers(press, &t, what) == 0) {
        expect_exact_heads(&t, L, N_KEPT, SINK, WINDOW, what);
        const pk_router_stats *st = pk_moe_router_stats(press);
        CHECK(st && st->recorded[0] && st->recorded[1] && st->experts == E, "%s: statistics recorded", what);
        for (int l = 0; st && l < N_LAYER; l++)
            for (int h = 0; h < N_HEAD; h++) {
                const size_t at = pk_router_stats_at(st, l, h);
                const int *tokens = st->tokens + at, *selected = st->selected + at, *budget = st->budget + at,
                          *kept = st->kept + at;
                CHECK(sum_of(budget, E) == N_KEPT - SINK - WINDOW && sum_of(kept, E) == sum_of(budget, E),
                      "%s: layer %d head %d budgets sum to %d, kept %d, want %d", what, l, h, sum_of(budget, E),
                      sum_of(kept, E), N_KEPT - SINK - WINDOW);
                CHECK(sum_of(selected, E) == WINDOW * TOP_K, "%s: %d window selections, want %d", what,
                      sum_of(selected, E), WINDOW * TOP_K);
                CHECK(sum_of(tokens, E) == ROUTABLE * TOP_K, "%s: %d routing slots, want %d", what,
                      sum_of(tokens, E), ROUTABLE * TOP_K);
                int each_kept = 1, equal_shares = 1;
                for (int e = 0; e < E; e++) {
                    each_kept &= kept[e] == budget[e];
                    equal_shares &= budget[e] == (N_KEPT - SINK - WINDOW) / E;
                }
                CHECK(each_kept, "%s: layer %d head %d every expert keeps its budget (%d %d %d %d of %d %d %d %d)",
                      what, l, h, kept[0], kept[1], kept[2], kept[3], budget[0], budget[1], budget[2], budget[3]);
                if (!strcmp(router, "adaptive") || !strcmp(router, "pikv")) {
                    CHECK(!equal_shares && argmax_of(budget, E) == argmax_of(selected, E),
                          "%s: layer %d head %d the budget follows the window (budgets %d %d %d %d, hits %d %d %d %d)",
                          what, l, h, budget[0], budget[1], budget[2], budget[3], selected[0], selected[1],
                          selected[2], selected[3]);
                } else {
                    CHECK(equal_shares, "%s: layer %d head %d equal shares of %d", what, l, h,
                          (N_KEPT - SINK - WINDOW) / E);
                }
                if (!strcmp(router, "eplb"))
                    CHECK(pk_router_imbalance(tokens, E) <= 1.0 + (double)E / L,
                          "eplb: layer %d head %d tokens %d %d %d %d, max/mean %.4f above 1 + E/L", l, h, tokens[0],
                          tokens[1], tokens[2], tokens[3], pk_router_imbalance(tokens, E));
                if (!strcmp(router, "topk_balanced")) {
                    const int capacity = (int)ceil(1.5 * TOP_K * ROUTABLE / E);
                    CHECK(tokens[argmax_of(tokens, E)] <= capacity, "topk_balanced: an expert holds %d > capacity %d",
                          tokens[argmax_of(tokens, E)], capacity);
                }
            }
        /* EPLB places the 8 shards of each layer on 2 workers, 4 slots each. */
        if (st && !strcmp(router, "eplb")) {
            int seen[N_HEAD * E] = {0}, in_range = 1;
            for (int p = 0; p < st->slots; p++) {
                const int shard = st->slot_shard[p];
                in_range &= shard >= 0 && shard < N_HEAD * E;
                if (shard >= 0 && shard < N_HEAD * E) seen[shard]++;
            }
            int all_placed = 1;
            for (int i = 0; i < N_HEAD * E; i++) all_placed &= seen[i] == 1;
            double total = 0;
            for (int i = 0; i < N_HEAD * E; i++) total += (double)st->kept[i] * st->selected[i];
            CHECK(st->workers == 2 && st->slots == N_HEAD * E && in_range && all_placed,
                  "eplb: every shard of layer 0 in one slot");
            CHECK(fabs(st->worker_load[0] + st->worker_load[1] - total) < 1e-3 * (total + 1),
                  "eplb: worker loads %g + %g = total %g", st->worker_load[0], st->worker_load[1], total);
        }
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* The capacity must bind where plain routing overflows: with top_k 2, base
 * routing puts more than 2 * 180 / 4 = 90 slots in some expert of the
 * synthetic layer; topk_balanced with capacity factor 1 holds every expert to
 * ceil(1 * 2 * 180 / 4) = 90 and still places all 360 slots. */
static void check_capacity_binds(void)
{
    const char *specs[] = {"moe_router:router=base,ratio=0.5,window=16",
                           "moe_router:router=topk_balanced,capacity=1,ratio=0.5,window=16"};
    int most[2] = {0, 0}, all_slots = 1;
    for (int i = 0; i < 2; i++) {
        test_layer t;
        if (layer_init(&t, 200, 200, 0)) return;
        pk_press *press = press_from(specs[i], NULL);
        const int ok = press && compress_layers(press, &t, specs[i]) == 0;
        const pk_router_stats *st = ok ? pk_moe_router_stats(press) : NULL;
        for (int l = 0; st && l < N_LAYER; l++)
            for (int h = 0; h < N_HEAD; h++) {
                const int *tokens = st->tokens + pk_router_stats_at(st, l, h);
                all_slots &= sum_of(tokens, DIRECTIONS) == 360;
                if (tokens[argmax_of(tokens, DIRECTIONS)] > most[i]) most[i] = tokens[argmax_of(tokens, DIRECTIONS)];
            }
        pk_press_destroy(press);
        layer_free(&t);
    }
    CHECK(most[0] > 90 && most[1] <= 90 && all_slots,
          "capacity: base's fullest expert holds %d (> 90), topk_balanced's %d (<= 90), all slots placed: %d", most[0],
          most[1], all_slots);
}

/* Coverage, the point of the press: window attention favours direction 0,
 * yet with eplb every direction keeps its quarter of the routed budget,
 * where a global top-k of attention would keep mostly direction 0. */
static void check_coverage(void)
{
    enum { L = 200 };
    test_layer t;
    if (layer_init(&t, L, L, 0)) return;
    pk_press *press = press_from("moe_router:router=eplb,top_k=1,ratio=0.6,sink=4,window=16", NULL);
    if (press && compress_layers(press, &t, "coverage") == 0) {
        const pk_kv_head *kh = pk_kv_head_at(&t.kv, 0, 0);
        int per_direction[DIRECTIONS] = {0};
        for (int j = 0; j < kh->len; j++)
            if (kh->pos[j] >= 4 && kh->pos[j] < L - 16) per_direction[direction_of(kh->pos[j])]++;
        /* n_kept 80, 60 routed, 15 per expert; the experts are the directions. */
        CHECK(per_direction[0] == 15 && per_direction[1] == 15 && per_direction[2] == 15 && per_direction[3] == 15,
              "coverage: routed entries kept per key direction %d %d %d %d, want 15 each", per_direction[0],
              per_direction[1], per_direction[2], per_direction[3]);
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* Ratio 0 keeps everything untouched; a ratio so high that the budget is
 * below sinks + window keeps the earliest of them; the same input twice gives
 * the same cache; a view of only the last 8 query rows (as while decoding)
 * uses those as its window. */
static void check_edges(void)
{
    test_layer t, u;
    if (layer_init(&t, 200, 200, 0)) return;
    if (layer_init(&u, 200, 200, 0)) {
        layer_free(&t);
        return;
    }
    pk_press *press = press_from("moe_router:0", NULL);
    const size_t bytes = pk_kv_bytes(&t.kv);
    if (press && compress_layers(press, &t, "ratio 0") == 0)
        CHECK(pk_kv_bytes(&t.kv) == bytes && memcmp(pk_kv_at(&t.kv, 0, 0)->k, pk_kv_at(&u.kv, 0, 0)->k,
                                                    200 * HEAD_DIM * sizeof(float)) == 0,
              "ratio 0 keeps every entry as it was");
    pk_press_destroy(press);

    press = press_from("moe_router:ratio=0.95,sink=4,window=64", NULL);
    if (press && compress_layers(press, &t, "ratio 0.95") == 0) {
        const pk_kv_head *kh = pk_kv_head_at(&t.kv, 1, 1);
        CHECK(kh->len == 10 && kh->pos[0] == 0 && kh->pos[3] == 3 && kh->pos[4] == 136 && kh->pos[9] == 141,
              "ratio 0.95: keeps the 10 earliest of sinks and window (got %d entries, %d..%d)", kh->len, kh->pos[0],
              kh->pos[kh->len - 1]);
    }
    pk_press_destroy(press);
    layer_free(&t);
    layer_free(&u);

    if (layer_init(&t, 200, 200, 0)) return;
    if (layer_init(&u, 200, 200, 0)) {
        layer_free(&t);
        return;
    }
    press = press_from("moe_router:router=hierarchical,ratio=0.4,window=16", NULL);
    if (press && compress_layers(press, &t, "determinism") == 0 && compress_layers(press, &u, "determinism") == 0)
        CHECK(memcmp(pk_kv_at(&t.kv, 1, 0)->pos, pk_kv_at(&u.kv, 1, 0)->pos,
                     (size_t)pk_press_n_kept(200, 0.4) * sizeof(int32_t)) == 0,
              "the same layer compresses to the same positions");
    pk_press_destroy(press);
    layer_free(&t);
    layer_free(&u);

    /* Query rows 0..7 are positions 192..199 of the 200 cached. */
    if (layer_init(&t, 200, 8, 192)) return;
    press = press_from("moe_router:router=pikv,ratio=0.5,window=16", NULL);
    if (press && compress_layers(press, &t, "decode view") == 0) expect_exact_heads(&t, 200, 100, 4, 8, "decode view");
    pk_press_destroy(press);
    layer_free(&t);
}

/* Make each allocation of a compression fail in turn: every failure is
 * reported as out of memory, with nothing leaked (LeakSanitizer checks at
 * exit), until the compression needs no more allocations than allowed. */
static void check_allocation_failures(const char *spec)
{
    int failures = 0, reported = 1, succeeded = 0;
    for (long n = 1; n < 1000 && !succeeded; n++) {
        test_layer t;
        if (layer_init(&t, 120, 120, 0)) return;
        pk_press *press = pikv_press_new(spec, NULL, MODEL);
        int rc = -1;
        pk_test_fail_alloc_after(n);
        for (int l = 0; press && l < N_LAYER; l++) {
            t.view.layer = l;
            if ((rc = layer_compress(press, &t))) break;
        }
        pk_test_fail_alloc_after(0);
        if (rc == 0) {
            succeeded = 1;
        } else {
            failures++;
            reported &= strstr(pikv_last_error(), "out of memory") != NULL;
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
    CHECK(succeeded && failures >= 20 && reported, "%s: %d allocation failures, reported right: %d", spec, failures,
          reported);
}

/* A bad spec fails to build with a one-line message containing `want`. */
static void expect_bad_spec(const char *text, const char *want)
{
    pk_spec *spec = NULL;
    pk_press *press = NULL;
    pk_press_env env = {NULL, MODEL};
    int rc = pk_spec_parse(text, &spec);
    if (rc == 0) rc = pk_press_build(spec, &env, &press);
    pk_spec_free(spec);
    CHECK(rc != 0 && !press && strstr(pikv_last_error(), want) && !strchr(pikv_last_error(), '\n'),
          "'%s' should fail with '%s', got: %s", text, want, rc ? pikv_last_error() : "(built)");
    pk_press_destroy(press);
}

static void check_bad_specs(void)
{
    expect_bad_spec("moe_router:router=random,ratio=0.3", "unknown router 'random' (known: base, topk_balanced");
    expect_bad_spec("moe_router:experts=0", "experts=0 is out of range");
    expect_bad_spec("moe_router:top_k=0", "top_k=0 is out of range");
    expect_bad_spec("moe_router:experts=4,top_k=5", "top_k=5 exceeds experts=4");
    expect_bad_spec("moe_router:router=hierarchical,experts=4,groups=3", "groups=3 does not divide experts=4");
    expect_bad_spec("moe_router:router=hierarchical,experts=4,groups=4", "top_k=2 exceeds the 1 experts of a group");
    expect_bad_spec("moe_router:capacity=0.5", "capacity=0.5 is out of range");
    expect_bad_spec("moe_router:ratio=1", "ratio=1 is out of range");
    expect_bad_spec("moe_router:expert=4", "unknown parameter 'expert'");
    expect_bad_spec("moe_router(snapkv):0.3", "takes no inner press");
    pk_press *snap = press_from("snapkv:0.3", NULL);
    CHECK(pk_moe_router_stats(snap) == NULL, "another press has no router statistics");
    pk_press_destroy(snap);
    pk_press *fresh = press_from("moe_router:0.3", NULL);
    CHECK(pk_moe_router_stats(fresh) == NULL, "no statistics before the first compression");
    pk_press_destroy(fresh);
}

/* On the bundled model: a 600-token needle task's context, prefilled with the
 * default router and with pikv; every head keeps floor(L * 0.65). */
static void check_bundled_model(void)
{
    pikv_model *model = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    pk_haystack haystack = {0};
    if (!model || !tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        CHECK(0, "bundled model: %s", pikv_last_error());
        pikv_tokenizer_free(tok);
        pikv_model_free(model);
        return;
    }
    const pikv_config *c = pikv_model_config(model);
    pk_task task;
    if (pk_task_make(&haystack, PK_TASK_PASSKEY, 1, 600, 0.5, 3, &task) == 0) {
        const char *specs[] = {"moe_router:0.35", "moe_router:router=pikv,top_k=1,ratio=0.35"};
        pikv_session *s = pikv_session_new(model, 2);
        for (size_t i = 0; s && i < sizeof specs / sizeof *specs; i++) {
            pikv_press *p = pikv_press_new(specs[i], model, MODEL);
            pikv_session_reset(s);
            CHECK(p && pikv_prefill(s, task.context, task.n_context, p, NULL) == 0, "%s: %s", specs[i],
                  pikv_last_error());
            const int want = pk_press_n_kept(task.n_context, 0.35);
            int exact = 1;
            for (int l = 0; l < c->n_layer; l++)
                for (int h = 0; h < c->n_head; h++) exact &= pikv_session_kv_len(s, l, h) == want;
            CHECK(exact, "%s: every head keeps floor(%d * (1 - 0.35)) = %d", specs[i], task.n_context, want);
            const pk_router_stats *st = pk_moe_router_stats(p);
            int recorded = st != NULL;
            for (int l = 0; st && l < c->n_layer; l++) recorded &= st->recorded[l];
            CHECK(recorded, "%s: statistics for every layer", specs[i]);
            pikv_press_free(p);
        }
        pikv_session_free(s);
        pk_task_free(&task);
    } else {
        CHECK(0, "task: %s", pikv_last_error());
    }
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
}

int main(void)
{
    check_kmeans_two_clusters();
    check_kmeans_balanced();
    const char *routers[] = {"base", "topk_balanced", "eplb", "adaptive", "pikv", "hierarchical"};
    for (size_t i = 0; i < sizeof routers / sizeof *routers; i++) check_router(routers[i]);
    check_capacity_binds();
    check_coverage();
    check_edges();
    check_bad_specs();
    check_allocation_failures("moe_router:router=eplb,ratio=0.5,window=16");
    check_allocation_failures("moe_router:router=hierarchical,ratio=0.5,window=16");
    check_allocation_failures("moe_router:router=eplb,ratio=0.5,window=16,route=1");
    check_bundled_model();
    return check_done("moe_router");
}
