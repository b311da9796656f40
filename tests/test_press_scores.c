/* Hand-worked cases for the scoring and selection rule of every KV-cache
 * press. Each case builds a tiny synthetic layer entry by entry -- two
 * layers, two heads, head_dim 2, positions 0..L-1 unless said otherwise --
 * builds the press from its spec string through pk_spec_parse and
 * pk_press_build, runs it, and compares the scores and the positions each head
 * kept with numbers worked out by hand in the comment beside the check.
 *
 * A trick used throughout: keys that are all zero give uniform attention, so a
 * query at position p pays 1/(number of entries at positions <= p) to each
 * entry it can see. The attention scale of the synthetic view is 1, so with a
 * query (1, 0) and a key (x, y) an entry's unnormalised weight is exp(x). */
#include "check.h"
#include "press_test.h"
#include "kv/kvcache.h"
#include "pikv.h"
#include "press/press.h"
#include "press/snapkv.h"
#include "press/spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_LAYER = 2, N_HEAD = 2, HEAD_DIM = 2, ROW_WIDTH = N_HEAD * HEAD_DIM };

static const char *const model_dir = "models/pikv-ref-14m";

/* Two layers of two heads of HEAD_DIM, `len` zero entries each, `n_q` zero
 * query rows of `q_stride` floats from position q_pos0 (test_layer_init). */
static int layer_init(test_layer *t, int len, int n_q, int q_pos0, int q_stride)
{
    return test_layer_init(t, N_LAYER, N_HEAD, HEAD_DIM, len, n_q, q_pos0, q_stride);
}

/* Append one zero entry at position `pos` to every head of every layer. */
static int layer_append(test_layer *t, int pos)
{
    if (pk_kv_reserve(&t->kv, 1, 1)) return -1;
    for (int i = 0; i < N_LAYER * N_HEAD; i++) {
        pk_kv_head *kh = &t->kv.heads[i];
        float *keys = (float *)kh->k, *values = (float *)kh->v; /* the test cache stores f32 */
        for (int d = 0; d < HEAD_DIM; d++) keys[kh->len * HEAD_DIM + d] = values[kh->len * HEAD_DIM + d] = 0.f;
        kh->pos[kh->len++] = pos;
    }
    return 0;
}

static void set_key(test_layer *t, int layer, int head, int j, float x, float y)
{
    float *k = (float *)pk_kv_head_at(&t->kv, layer, head)->k + j * HEAD_DIM;
    k[0] = x;
    k[1] = y;
}

static void set_value(test_layer *t, int layer, int head, int j, float x, float y)
{
    float *v = (float *)pk_kv_head_at(&t->kv, layer, head)->v + j * HEAD_DIM;
    v[0] = x;
    v[1] = y;
}

static void set_query(test_layer *t, int row, int head, float x, float y)
{
    float *q = t->q + (size_t)row * (size_t)t->view.q_stride + (size_t)head * HEAD_DIM;
    q[0] = x;
    q[1] = y;
}

/* The positions a head holds, in storage order, as "0,2,5" (a few rotating
 * buffers, so that two results can appear in one message). */
static const char *kept_positions(const test_layer *t, int layer, int head)
{
    static char buffers[4][512];
    static int next;
    char *buf = buffers[next++ % 4];
    const pk_kv_head *kh = pk_kv_head_at(&t->kv, layer, head);
    size_t n = 0;
    buf[0] = '\0';
    for (int j = 0; j < kh->len && n < sizeof buffers[0]; j++)
        n += (size_t)snprintf(buf + n, sizeof buffers[0] - n, "%s%d", j ? "," : "", kh->pos[j]);
    return buf;
}

static void expect_kept(const test_layer *t, int layer, int head, const char *want, const char *what)
{
    const char *got = kept_positions(t, layer, head);
    CHECK(strcmp(got, want) == 0, "%s: layer %d head %d kept {%s}, want {%s}", what, layer, head, got, want);
}

/* After a compression every head's allocation fits its entries exactly, and
 * the byte count is the kept entries times the bytes of one entry. */
static void expect_memory_released(const test_layer *t, const char *what)
{
    size_t entries = 0;
    int loose = -1;
    for (int i = 0; i < N_LAYER * N_HEAD; i++) {
        entries += (size_t)t->kv.heads[i].len;
        if (t->kv.heads[i].cap != t->kv.heads[i].len && loose < 0) loose = i;
    }
    CHECK(loose < 0, "%s: head %d has cap %d for len %d", what, loose, loose < 0 ? 0 : t->kv.heads[loose].cap,
          loose < 0 ? 0 : t->kv.heads[loose].len);
    CHECK(pk_kv_bytes(&t->kv) == entries * pk_kv_entry_bytes(&t->kv), "%s: %zu bytes for %zu entries of %zu", what,
          pk_kv_bytes(&t->kv), entries, pk_kv_entry_bytes(&t->kv));
}

static void compress_ok(pk_press *press, test_layer *t, const char *what)
{
    int rc = layer_compress(press, t);
    CHECK(rc == 0, "%s: compress failed: %s", what, pikv_last_error());
}

/* The press's own scores of layer 0 (free with pk_press_free_scores). */
static float **scores_of(const pk_press *press, test_layer *t)
{
    float **scores = pk_press_alloc_scores(&t->view);
    if (!scores) return NULL;
    int rc = press->ops->score(press, &t->view, scores);
    CHECK(rc == 0, "%s: score failed: %s", press->name, pikv_last_error());
    if (rc) {
        pk_press_free_scores(&t->view, scores);
        return NULL;
    }
    return scores;
}

/* Compare one head's scores with hand values (INFINITY: must be +inf). */
static void expect_scores(float *const *scores, int head, const double *want, int n, double tol, const char *what)
{
    for (int j = 0; j < n; j++) {
        double got = scores[head][j];
        int ok = isinf(want[j]) ? isinf(got) && got > 0 : fabs(got - want[j]) <= tol;
        CHECK(ok, "%s: head %d entry %d scores %.7g, want %.7g", what, head, j, got, want[j]);
    }
}

/* ---- knorm ------------------------------------------------------------- */

/* Score -||k_j||, n_kept = floor(L(1-r)), earlier entry on ties.
 * L = 5, r = 0.5: n_kept = floor(2.5) = 2 in every head.
 * Head 0 norms: |(3,0)|=3, |(0,1)|=1, |(1.2,1.6)|=2, |(0,-1)|=1, |(3,4)|=5
 *   -> scores -3,-1,-2,-1,-5 -> the two norm-1 entries stay: {1,3}.
 * Head 1 norms: 2, 1, 1, 1, 4 (three-way tie at 1 in entries 1,2,3)
 *   -> the earliest two of the tie stay: {1,2}.
 * Layer 1 is not in the view and keeps its 5 entries. */
static void test_knorm(void)
{
    test_layer t;
    if (layer_init(&t, 5, 1, 4, ROW_WIDTH)) return;
    const float head0[5][2] = {{3, 0}, {0, 1}, {1.2f, 1.6f}, {0, -1}, {3, 4}};
    const float head1[5][2] = {{2, 0}, {1, 0}, {0, 1}, {-1, 0}, {0, 4}};
    for (int j = 0; j < 5; j++) {
        set_key(&t, 0, 0, j, head0[j][0], head0[j][1]);
        set_key(&t, 0, 1, j, head1[j][0], head1[j][1]);
    }
    pk_press *press = press_from("knorm:0.5", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double want0[5] = {-3, -1, -2, -1, -5}, want1[5] = {-2, -1, -1, -1, -4};
            expect_scores(scores, 0, want0, 5, 1e-6, "knorm scores");
            expect_scores(scores, 1, want1, 5, 1e-6, "knorm scores");
            pk_press_free_scores(&t.view, scores);
        }
        compress_ok(press, &t, "knorm");
        expect_kept(&t, 0, 0, "1,3", "knorm smallest norms");
        expect_kept(&t, 0, 1, "1,2", "knorm ties to the earlier entry");
        expect_kept(&t, 1, 0, "0,1,2,3,4", "knorm leaves other layers alone");
        expect_memory_released(&t, "knorm");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- streaming_llm ----------------------------------------------------- */

/* Keep the first `sink` positions and the most recent ones.
 * L = 8, r = 0.25: n_kept = floor(6) = 6.
 * sink=4 (default): sinks 0,1,2,3 + the two most recent 6,7 -> {0,1,2,3,6,7}.
 * sink=1: sink 0 + the five most recent 3..7 -> {0,3,4,5,6,7}.
 * Keys are irrelevant to it; they are given distinct norms so that a press
 * that looked at them would choose differently. */
static void test_streaming_llm(void)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {{"streaming_llm:0.25", "0,1,2,3,6,7"}, {"streaming_llm:0.25,sink=1", "0,3,4,5,6,7"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        test_layer t;
        if (layer_init(&t, 8, 1, 7, ROW_WIDTH)) return;
        for (int h = 0; h < N_HEAD; h++)
            for (int j = 0; j < 8; j++) set_key(&t, 0, h, j, (float)(8 - j), 0.f);
        pk_press *press = press_from(cases[c].spec, NULL);
        if (press) {
            compress_ok(press, &t, cases[c].spec);
            for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, cases[c].want, cases[c].spec);
            expect_memory_released(&t, cases[c].spec);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- snapkv ------------------------------------------------------------ */

/* snapkv:window=2,kernel=3 on 5 entries (positions 0..4), query rows at
 * positions 3 and 4 (q_pos0 = 3, n_q = 2). The window is positions >= 3 + 2 - 2
 * = 3: entries 3 and 4 score +inf.
 *
 * Head 0, zero keys: row at 3 pays 1/4 to entries 0..3, row at 4 pays 1/5 to
 * 0..4. Mean over the window for entries 0,1,2: (1/4 + 1/5)/2 = 0.225 each.
 * Pooled (kernel 3, zero padding counted, divide by 3):
 *   e0 = (0 + .225 + .225)/3 = 0.15, e1 = .675/3 = 0.225, e2 = 0.15.
 *
 * Head 1, queries (1,0), key x of entry 0 = ln 3, others 0: weights 3,1,1,1(,1).
 * Row at 3: e0 = 3/6, e1 = e2 = 1/6; row at 4: e0 = 3/7, e1 = e2 = 1/7.
 *   mean e0 = (1/2 + 3/7)/2 = 13/28, e1 = e2 = (1/6 + 1/7)/2 = 13/84.
 *   pooled e0 = (0 + 39/84 + 13/84)/3 = 13/63 = 0.2063492,
 *          e1 = (39 + 13 + 13)/84/3 = 65/252 = 0.2579365,
 *          e2 = (13 + 13 + 0)/84/3 = 13/126 = 0.1031746.
 *
 * r = 0.4: n_kept = floor(3) = 3 -> window + best other.
 *   head 0: e1 (0.225) -> {1,3,4}; head 1: e1 (pooling lifts it over e0) -> {1,3,4}.
 * r = 0.2: n_kept = 4 -> head 0: e0 and e2 tie at 0.15, earlier wins -> {0,1,3,4};
 *   head 1: e1 then e0 -> {0,1,3,4}. */
static void snapkv_layer(test_layer *t)
{
    set_query(t, 0, 1, 1.f, 0.f);
    set_query(t, 1, 1, 1.f, 0.f);
    set_key(t, 0, 1, 0, logf(3.f), 0.f);
}

static void test_snapkv(void)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {{"snapkv:0.4,window=2,kernel=3", "1,3,4"}, {"snapkv:0.2,window=2,kernel=3", "0,1,3,4"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        test_layer t;
        if (layer_init(&t, 5, 2, 3, ROW_WIDTH)) return;
        snapkv_layer(&t);
        pk_press *press = press_from(cases[c].spec, NULL);
        if (press) {
            if (c == 0) {
                float **scores = scores_of(press, &t);
                if (scores) {
                    const double want0[5] = {0.15, 0.225, 0.15, INFINITY, INFINITY};
                    const double want1[5] = {13.0 / 63, 65.0 / 252, 13.0 / 126, INFINITY, INFINITY};
                    expect_scores(scores, 0, want0, 5, 1e-6, "snapkv scores, zero keys");
                    expect_scores(scores, 1, want1, 5, 1e-6, "snapkv scores, one strong key");
                    pk_press_free_scores(&t.view, scores);
                }
            }
            compress_ok(press, &t, cases[c].spec);
            for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, cases[c].want, cases[c].spec);
            expect_memory_released(&t, cases[c].spec);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- tova -------------------------------------------------------------- */

/* 4 entries at positions 0..3, query rows at positions 2 and 3; only the last
 * row (position 3) counts. Last-row query (1,0) in both heads, scale 1:
 *   head 0 key x = 0, ln 4, ln 2, 0 -> weights 1,4,2,1 /8 = .125,.5,.25,.125
 *   head 1 key x = ln 5, 0, 0, 0    -> weights 5,1,1,1 /8 = .625,.125,.125,.125
 *   mean over heads: .375, .3125, .1875, .125; the last token (position 3)
 *   scores +inf although it draws the least attention.
 * The first row's query (-1, 0) would favour other entries; it is ignored.
 * r = 0.5: n_kept = 2 -> {0,3} in both heads (head 0 alone would keep 1).
 * r = 0.75: n_kept = 1 -> {3}. */
static void test_tova(void)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {{"tova:0.5", "0,3"}, {"tova:0.75", "3"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        test_layer t;
        if (layer_init(&t, 4, 2, 2, ROW_WIDTH)) return;
        for (int h = 0; h < N_HEAD; h++) {
            set_query(&t, 0, h, -1.f, 0.f);
            set_query(&t, 1, h, 1.f, 0.f);
        }
        set_key(&t, 0, 0, 1, logf(4.f), 0.f);
        set_key(&t, 0, 0, 2, logf(2.f), 0.f);
        set_key(&t, 0, 1, 0, logf(5.f), 0.f);
        pk_press *press = press_from(cases[c].spec, NULL);
        if (press) {
            if (c == 0) {
                float **scores = scores_of(press, &t);
                if (scores) {
                    const double want[4] = {0.375, 0.3125, 0.1875, INFINITY};
                    for (int h = 0; h < N_HEAD; h++) expect_scores(scores, h, want, 4, 1e-6, "tova scores");
                    pk_press_free_scores(&t.view, scores);
                }
            }
            compress_ok(press, &t, cases[c].spec);
            for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, cases[c].want, cases[c].spec);
            expect_memory_released(&t, cases[c].spec);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- observed_attention ------------------------------------------------ */

/* Score = total attention received / number of queries that could see it.
 * 4 entries at positions 0..3, query rows at positions 0..3.
 *
 * Head 0, zero keys: row t pays 1/(t+1) to entries 0..t.
 *   e0 = (1 + 1/2 + 1/3 + 1/4)/4 = 25/48 = 0.5208333
 *   e1 = (1/2 + 1/3 + 1/4)/3     = 13/36 = 0.3611111
 *   e2 = (1/3 + 1/4)/2           =  7/24 = 0.2916667
 *   e3 = (1/4)/1                 =  1/4
 * Head 1, queries (1,0), key x of entry 3 = ln 9 (weight 9, others 1):
 *   row 0: e0 = 1; row 1: 1/2,1/2; row 2: 1/3 each; row 3: 1/12,1/12,1/12,9/12
 *   e0 = (1 + 1/2 + 1/3 + 1/12)/4 = 23/48 = 0.4791667
 *   e1 = (1/2 + 1/3 + 1/12)/3     = 11/36 = 0.3055556
 *   e2 = (1/3 + 1/12)/2           =  5/24 = 0.2083333
 *   e3 = (9/12)/1                 =  0.75
 *   (the plain total would rank e0 first: 23/12 = 1.92 > 0.75.)
 * r = 0.75: n_kept = 1 -> head 0 {0}, head 1 {3}. */
static void test_observed_attention(void)
{
    test_layer t;
    if (layer_init(&t, 4, 4, 0, ROW_WIDTH)) return;
    for (int row = 0; row < 4; row++) set_query(&t, row, 1, 1.f, 0.f);
    set_key(&t, 0, 1, 3, logf(9.f), 0.f);
    pk_press *press = press_from("observed_attention:0.75", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double want0[4] = {25.0 / 48, 13.0 / 36, 7.0 / 24, 0.25};
            const double want1[4] = {23.0 / 48, 11.0 / 36, 5.0 / 24, 0.75};
            expect_scores(scores, 0, want0, 4, 1e-6, "observed_attention scores, zero keys");
            expect_scores(scores, 1, want1, 4, 1e-6, "observed_attention scores, one strong key");
            pk_press_free_scores(&t.view, scores);
        }
        compress_ok(press, &t, "observed_attention");
        expect_kept(&t, 0, 0, "0", "observed_attention");
        expect_kept(&t, 0, 1, "3", "observed_attention divides by the queries that saw the entry");
        expect_memory_released(&t, "observed_attention");
    }
    pk_press_destroy(press);
    layer_free(&t);

    /* The queries are only the last two rows (positions 3 and 4) of 5 entries,
     * zero keys: row at 3 pays 1/4 to e0..e3, row at 4 pays 1/5 to e0..e4.
     * e0..e3 were seen by both rows: (1/4 + 1/5)/2 = 0.225; e4 by one: 0.2. */
    if (layer_init(&t, 5, 2, 3, ROW_WIDTH)) return;
    press = press_from("observed_attention:0.5", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double want[5] = {0.225, 0.225, 0.225, 0.225, 0.2};
            expect_scores(scores, 0, want, 5, 1e-6, "observed_attention scores, last rows only");
            pk_press_free_scores(&t.view, scores);
        }
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- expected_attention ------------------------------------------------ */

/* Identical keys, different value norms, sink = 4 (default).
 * 8 entries, zero queries (mu = 0, Sigma = 0): every non-sink logit is 0, the
 * softmax over the 4 non-sinks is 1/4 each, the score is 1/4 * ||v_j||.
 *   head 0: ||v|| of entries 4..7 = 1, 3, 2, 0.5 -> .25, .75, .5, .125;
 *           the sinks 0..3 have zero values and still score +inf.
 *   head 1: all ||v|| = 1 -> .25 each (a tie).
 * r = 0.25: n_kept = 6 -> the 4 sinks + 2 more:
 *   head 0 {0,1,2,3,5,6} (the larger value norms), head 1 {0,1,2,3,4,5}. */
static void test_expected_attention_value_norms(void)
{
    test_layer t;
    if (layer_init(&t, 8, 8, 0, ROW_WIDTH)) return;
    const float head0_values[4][2] = {{1, 0}, {0, 3}, {2, 0}, {0, 0.5f}};
    for (int h = 0; h < N_HEAD; h++)
        for (int j = 0; j < 8; j++) set_key(&t, 0, h, j, 1.f, 0.f);
    for (int j = 4; j < 8; j++) {
        set_value(&t, 0, 0, j, head0_values[j - 4][0], head0_values[j - 4][1]);
        set_value(&t, 0, 1, j, 1.f, 0.f);
    }
    pk_press *press = press_from("expected_attention:0.25", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double want0[8] = {INFINITY, INFINITY, INFINITY, INFINITY, 0.25, 0.75, 0.5, 0.125};
            const double want1[8] = {INFINITY, INFINITY, INFINITY, INFINITY, 0.25, 0.25, 0.25, 0.25};
            expect_scores(scores, 0, want0, 8, 1e-6, "expected_attention value norms");
            expect_scores(scores, 1, want1, 8, 1e-6, "expected_attention value norms");
            pk_press_free_scores(&t.view, scores);
        }
        compress_ok(press, &t, "expected_attention sink=4");
        expect_kept(&t, 0, 0, "0,1,2,3,5,6", "expected_attention larger value norm wins");
        expect_kept(&t, 0, 1, "0,1,2,3,4,5", "expected_attention sinks and ties");
        expect_memory_released(&t, "expected_attention");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* Nonzero queries, sink = 1, 4 entries, query rows at positions 0..3 (same
 * in both heads): row 0 = (100,-100) belongs to the sink and is left out of
 * the statistics; rows 1..3 = (1,1), (3,1), (2,1).
 *   mu = (2, 1); deviations x: -1, 1, 0, y: 0, 0, 0
 *   Sigma (population, /3) = [[2/3, 0], [0, 0]]
 *   logit(k) = k.mu/sqrt(2) + k'Sigma k/(2*2) = (2kx + ky)/sqrt(2) + kx^2/6
 * Keys: e0 = (5,5) (sink), e1 = (0,2), e2 = (1,0), e3 = (-1,0):
 *   l1 = 2/sqrt2 = sqrt2 = 1.4142136
 *   l2 = sqrt2 + 1/6 = 1.5808802   (the covariance term breaks the tie with e1)
 *   l3 = -sqrt2 + 1/6 = -1.2475469
 *   softmax: exp(l - l2) = e^(-1/6), 1, e^(-2 sqrt2) = .8464817, 1, .0591057
 *            sum 1.9055875 -> p = .4442104, .5247726, .0310171
 * Head 0: all ||v|| = 1 (the sink's value is zero) -> scores inf, p1, p2, p3.
 * Head 1: ||v_1|| = 2 -> scores inf, .8884207, .5247726, .0310171.
 * r = 0.5: n_kept = 2 -> head 0 {0,2}, head 1 {0,1}. */
static void test_expected_attention_statistics(void)
{
    test_layer t;
    if (layer_init(&t, 4, 4, 0, ROW_WIDTH)) return;
    const float rows[4][2] = {{100, -100}, {1, 1}, {3, 1}, {2, 1}};
    const float keys[4][2] = {{5, 5}, {0, 2}, {1, 0}, {-1, 0}};
    for (int h = 0; h < N_HEAD; h++) {
        for (int r = 0; r < 4; r++) set_query(&t, r, h, rows[r][0], rows[r][1]);
        for (int j = 0; j < 4; j++) set_key(&t, 0, h, j, keys[j][0], keys[j][1]);
        for (int j = 1; j < 4; j++) set_value(&t, 0, h, j, 1.f, 0.f);
    }
    set_value(&t, 0, 1, 1, 0.f, 2.f);
    pk_press *press = press_from("expected_attention:0.5,sink=1", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double l1 = sqrt(2.0), l2 = sqrt(2.0) + 1.0 / 6, l3 = -sqrt(2.0) + 1.0 / 6;
            const double sum = exp(l1) + exp(l2) + exp(l3);
            const double p1 = exp(l1) / sum, p2 = exp(l2) / sum, p3 = exp(l3) / sum;
            const double want0[4] = {INFINITY, p1, p2, p3}, want1[4] = {INFINITY, 2 * p1, p2, p3};
            CHECK(fabs(p1 - 0.4442104) < 1e-6 && fabs(p2 - 0.5247726) < 1e-6 && fabs(p3 - 0.0310171) < 1e-6,
                  "hand softmax: %g %g %g", p1, p2, p3);
            expect_scores(scores, 0, want0, 4, 1e-5, "expected_attention with query statistics");
            expect_scores(scores, 1, want1, 4, 1e-5, "expected_attention with query statistics");
            pk_press_free_scores(&t.view, scores);
        }
        compress_ok(press, &t, "expected_attention sink=1");
        expect_kept(&t, 0, 0, "0,2", "expected_attention covariance term");
        expect_kept(&t, 0, 1, "0,1", "expected_attention value norm");
        expect_memory_released(&t, "expected_attention sink=1");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- random ------------------------------------------------------------ */

/* 64 entries, r = 0.5: exactly 32 kept per head. Two presses built from the
 * same spec (seed 7) keep the same positions; seed 8 keeps other ones (the
 * chance that 32 of 64 come out the same is 1 in C(64,32) ~ 1.8e18). */
static void test_random(void)
{
    static const char *const specs[3] = {"random:0.5,seed=7", "random:0.5,seed=7", "random:0.5,seed=8"};
    char kept[3][N_HEAD][512];
    for (int c = 0; c < 3; c++) {
        test_layer t;
        if (layer_init(&t, 64, 1, 63, ROW_WIDTH)) return;
        pk_press *press = press_from(specs[c], NULL);
        for (int h = 0; h < N_HEAD; h++) kept[c][h][0] = '\0';
        if (press) {
            compress_ok(press, &t, specs[c]);
            for (int h = 0; h < N_HEAD; h++) {
                CHECK(pk_kv_at(&t.kv, 0, h)->len == 32, "%s: head %d kept %d, want 32", specs[c], h,
                      pk_kv_at(&t.kv, 0, h)->len);
                snprintf(kept[c][h], sizeof kept[c][h], "%s", kept_positions(&t, 0, h));
            }
            expect_memory_released(&t, specs[c]);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
    for (int h = 0; h < N_HEAD; h++) {
        CHECK(strcmp(kept[0][h], kept[1][h]) == 0, "random: same seed, head %d: {%s} vs {%s}", h, kept[0][h],
              kept[1][h]);
        CHECK(strcmp(kept[0][h], kept[2][h]) != 0, "random: seeds 7 and 8 kept the same {%s} in head %d", kept[0][h],
              h);
    }
}

/* ---- keydiff ----------------------------------------------------------- */

/* Score -cos(k_j, anchor), the anchor being the mean of the unit keys.
 * Head 0 keys (1,0), (0,2), (3,3): unit keys (1,0), (0,1), (1,1)/sqrt2, whose
 * sum (1 + 1/sqrt2, 1 + 1/sqrt2) points along (1,1).
 *   cos = 1/sqrt2, 1/sqrt2, 1
 *   -> scores -.7071068, -.7071068, -1: (3,3) is the most aligned.
 * Head 1 holds the same keys in the order (3,3), (1,0), (0,2).
 * r = 0.25: n_kept = floor(2.25) = 2 -> the aligned key goes:
 *   head 0 {0,1}, head 1 {1,2}. */
static void test_keydiff(void)
{
    test_layer t;
    if (layer_init(&t, 3, 1, 2, ROW_WIDTH)) return;
    const float keys[3][2] = {{1, 0}, {0, 2}, {3, 3}};
    for (int j = 0; j < 3; j++) {
        set_key(&t, 0, 0, j, keys[j][0], keys[j][1]);
        set_key(&t, 0, 1, (j + 1) % 3, keys[j][0], keys[j][1]);
    }
    pk_press *press = press_from("keydiff:0.25", NULL);
    if (press) {
        float **scores = scores_of(press, &t);
        if (scores) {
            const double want[3] = {-1 / sqrt(2.0), -1 / sqrt(2.0), -1};
            expect_scores(scores, 0, want, 3, 1e-6, "keydiff scores");
            pk_press_free_scores(&t.view, scores);
        }
        compress_ok(press, &t, "keydiff");
        expect_kept(&t, 0, 0, "0,1", "keydiff drops the key most aligned with the mean");
        expect_kept(&t, 0, 1, "1,2", "keydiff drops the key most aligned with the mean");
        expect_memory_released(&t, "keydiff");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- adakv ------------------------------------------------------------- */

/* adakv(knorm), 10 entries per head, r = 0.5: n_kept = 5, layer budget 10.
 * Head 0 keys (0.1 (j+1), 0): norms 0.1..1.0, all better than head 1's
 * (10 + j, 0): norms 10..19.
 * alpha = 0.4: safeguard floor(0.4 * 5) = 2 -> head 1 keeps its two smallest
 *   norms {0,1}; the other 8 of the budget go to head 0's best: {0..7}.
 * alpha = 0.2 (default): safeguard 1 -> head 1 {0}, head 0 {0..8}.
 * Either way the layer holds 2 * 5 = 10 entries. */
static void test_adakv(void)
{
    static const struct {
        const char *spec, *want0, *want1;
    } cases[] = {{"adakv(knorm):0.5,alpha=0.4", "0,1,2,3,4,5,6,7", "0,1"},
                 {"adakv(knorm):0.5", "0,1,2,3,4,5,6,7,8", "0"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        test_layer t;
        if (layer_init(&t, 10, 1, 9, ROW_WIDTH)) return;
        for (int j = 0; j < 10; j++) {
            set_key(&t, 0, 0, j, 0.1f * (float)(j + 1), 0.f);
            set_key(&t, 0, 1, j, 10.f + (float)j, 0.f);
        }
        pk_press *press = press_from(cases[c].spec, NULL);
        if (press) {
            compress_ok(press, &t, cases[c].spec);
            expect_kept(&t, 0, 0, cases[c].want0, cases[c].spec);
            expect_kept(&t, 0, 1, cases[c].want1, cases[c].spec);
            int total = pk_kv_at(&t.kv, 0, 0)->len + pk_kv_at(&t.kv, 0, 1)->len;
            CHECK(total == N_HEAD * 5, "%s: layer keeps %d, want %d", cases[c].spec, total, N_HEAD * 5);
            expect_memory_released(&t, cases[c].spec);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- pyramidkv --------------------------------------------------------- */

/* pk_pyramid_budget(len, r, window, beta, layer, n_layer):
 * kept = len (1-r), min = kept/beta, max = 2 kept - min, clamped to
 * len - window (then min = 2 kept - max); uniform round(kept) when
 * len >= max >= min >= window fails.
 *
 * len 100, r 0.5, window 4, beta 20, 6 layers: kept 50, min 2.5, max 97.5
 *   >= 96 -> max 96, min 4; step (96 - 4)/5 = 18.4:
 *   96, 77.6, 59.2, 40.8, 22.4, 4 -> 96, 78, 59, 41, 22, 4 (sum 300 = 6 * 50).
 * len 10, r 0.5, window 8: kept 5, max clamps to 2, min becomes 8 > max ->
 *   uniform 5 in every layer. One layer: uniform too. */
static void test_pyramid_budget(void)
{
    const int want[6] = {96, 78, 59, 41, 22, 4};
    int sum = 0;
    for (int l = 0; l < 6; l++) {
        int b = pk_pyramid_budget(100, 0.5, 4, 20.0, l, 6);
        CHECK(b == want[l], "pyramid budget layer %d: %d, want %d", l, b, want[l]);
        if (l > 0) CHECK(b < pk_pyramid_budget(100, 0.5, 4, 20.0, l - 1, 6), "pyramid budget must decrease");
        sum += b;
    }
    CHECK(abs(sum - 6 * 50) <= 3, "pyramid budgets sum to %d, want 300 within rounding", sum);

    /* No clamp: len 1000, r 0.7, window 8, beta 20, 6 layers: kept 300,
     * min 15, max 585 < 992; step (585 - 15)/5 = 114:
     * 585, 471, 357, 243, 129, 15 (sum 1800 = 6 * 300). */
    const int unclamped[6] = {585, 471, 357, 243, 129, 15};
    sum = 0;
    for (int l = 0; l < 6; l++) {
        int b = pk_pyramid_budget(1000, 0.7, 8, 20.0, l, 6);
        CHECK(b == unclamped[l], "pyramid budget (no clamp) layer %d: %d, want %d", l, b, unclamped[l]);
        sum += b;
    }
    CHECK(abs(sum - 6 * 300) <= 3, "pyramid budgets sum to %d, want 1800 within rounding", sum);

    for (int l = 0; l < 6; l++) {
        int b = pk_pyramid_budget(10, 0.5, 8, 20.0, l, 6);
        CHECK(b == 5, "pyramid fallback layer %d: %d, want uniform 5", l, b);
    }
    CHECK(pk_pyramid_budget(100, 0.5, 4, 20.0, 0, 1) == 50, "pyramid with one layer: uniform 50");
}

/* pyramidkv:0.5,window=2 (kernel 5, beta 20) on 10 entries, query rows at
 * positions 0..9, zero keys, 2 layers:
 *   kept 5, min .25, max 9.75 >= 10 - 2 -> max 8, min 2; step 6:
 *   layer 0 keeps 8, layer 1 keeps 2 (sum 10 = 2 * 5).
 * SnapKV scores: window = positions 8, 9 (+inf). Entries 0..7 have mean
 * attention a = (1/9 + 1/10)/2 each; pooled over 5 with zero padding:
 *   3a/5, 4a/5, a, a, a, a, 4a/5, 3a/5.
 * Layer 0: window + the 6 best: entries 2..5 (a), then 1 and 6 (4a/5)
 *   -> {1,2,3,4,5,6,8,9}. Layer 1: the window only -> {8,9}. */
static void test_pyramidkv(void)
{
    test_pyramid_budget();
    test_layer t;
    if (layer_init(&t, 10, 10, 0, ROW_WIDTH)) return;
    pk_press *press = press_from("pyramidkv:0.5,window=2", NULL);
    if (press) {
        CHECK(pk_pyramid_budget(10, 0.5, 2, 20.0, 0, 2) == 8 && pk_pyramid_budget(10, 0.5, 2, 20.0, 1, 2) == 2,
              "pyramid budgets for 10 entries over 2 layers: want 8 and 2");
        for (int layer = 0; layer < N_LAYER; layer++) {
            t.view.layer = layer;
            compress_ok(press, &t, "pyramidkv");
        }
        for (int h = 0; h < N_HEAD; h++) {
            expect_kept(&t, 0, h, "1,2,3,4,5,6,8,9", "pyramidkv layer 0");
            expect_kept(&t, 1, h, "8,9", "pyramidkv layer 1");
        }
        expect_memory_released(&t, "pyramidkv");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- chunkkv ----------------------------------------------------------- */

/* chunkkv(knorm):0.5,chunk=2 on 7 entries: chunks {0,1} {2,3} {4,5} {6}
 * (4 chunks, the last partial); kept chunks = max(1, floor(4 * 0.5)) = 2.
 * Key norms  head 0: 1,1, 5,5, 9,9, 6;  head 1: 9,9, 2,2, 9,9, 6.
 * Chunk score = sum over heads and tokens of -norm / tokens in the chunk:
 *   c0 = -(1+1+9+9)/2 = -10, c1 = -(5+5+2+2)/2 = -7, c2 = -36/2 = -18,
 *   c3 = -(6+6)/1 = -12 (divided by its one token, not by the chunk size:
 *   -12/2 = -6 would put it first).
 *   -> c1 and c0 stay: {0,1,2,3} in both heads (head 1 alone would rank
 *   c1 -2, c3 -6 first and keep {2,3,6}).
 * Second case, 3 entries, r = 0.75: 2 chunks, floor(0.5) = 0 -> 1 chunk;
 *   norms 5,5,1 in both heads: c0 = -10, c1 = -2 -> {2}. */
static void test_chunkkv(void)
{
    test_layer t;
    if (layer_init(&t, 7, 1, 6, ROW_WIDTH)) return;
    const float norms0[7] = {1, 1, 5, 5, 9, 9, 6}, norms1[7] = {9, 9, 2, 2, 9, 9, 6};
    for (int j = 0; j < 7; j++) {
        set_key(&t, 0, 0, j, norms0[j], 0.f);
        set_key(&t, 0, 1, j, 0.f, norms1[j]);
    }
    pk_press *press = press_from("chunkkv(knorm):0.5,chunk=2", NULL);
    if (press) {
        compress_ok(press, &t, "chunkkv");
        for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, "0,1,2,3", "chunkkv whole chunks");
        expect_memory_released(&t, "chunkkv");
    }
    pk_press_destroy(press);
    layer_free(&t);

    if (layer_init(&t, 3, 1, 2, ROW_WIDTH)) return;
    const float norms[3] = {5, 5, 1};
    for (int h = 0; h < N_HEAD; h++)
        for (int j = 0; j < 3; j++) set_key(&t, 0, h, j, norms[j], 0.f);
    press = press_from("chunkkv(knorm):0.75,chunk=2", NULL);
    if (press) {
        compress_ok(press, &t, "chunkkv at least one chunk");
        for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, "2", "chunkkv at least one chunk");
        expect_memory_released(&t, "chunkkv at least one chunk");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- per_layer --------------------------------------------------------- */

/* per_layer(knorm):ratios=0.5/0.25/0/0/0/0 (the bundled model has 6 layers).
 * 8 entries in both layers, key norms 8 - j (later entries smaller).
 *   layer 0, r 0.5: floor(4) = 4 -> {4,5,6,7}
 *   layer 1, r 0.25: floor(6) = 6 -> {2,3,4,5,6,7}
 * Its ratio field is the mean over layers: 0.75/6 = 0.125. */
static void test_per_layer(const pikv_model *model)
{
    test_layer t;
    if (layer_init(&t, 8, 1, 7, ROW_WIDTH)) return;
    for (int l = 0; l < N_LAYER; l++)
        for (int h = 0; h < N_HEAD; h++)
            for (int j = 0; j < 8; j++) set_key(&t, l, h, j, (float)(8 - j), 0.f);
    pk_press *press = press_from("per_layer(knorm):ratios=0.5/0.25/0/0/0/0", model);
    if (press) {
        CHECK(fabs(press->ratio - 0.125) < 1e-12, "per_layer ratio %g, want 0.125", press->ratio);
        for (int layer = 0; layer < N_LAYER; layer++) {
            t.view.layer = layer;
            compress_ok(press, &t, "per_layer");
        }
        for (int h = 0; h < N_HEAD; h++) {
            expect_kept(&t, 0, h, "4,5,6,7", "per_layer layer 0 (r = 0.5)");
            expect_kept(&t, 1, h, "2,3,4,5,6,7", "per_layer layer 1 (r = 0.25)");
        }
        expect_memory_released(&t, "per_layer");
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- composed ---------------------------------------------------------- */

/* 8 entries, key norms by position: 9, 1, 8, 7, 6, 2, 3, 4.
 * composed[knorm:0.5,streaming_llm:0.5]:
 *   knorm keeps 4 smallest norms: positions 1 (1), 5 (2), 6 (3), 7 (4);
 *   streaming_llm (sink 4) keeps floor(4 * 0.5) = 2 of those: the sink
 *   position 1 and the most recent 7 -> {1,7}.
 * composed[streaming_llm:0.5,knorm:0.5] (the other order):
 *   streaming_llm keeps 4: sinks {0,1,2,3}; knorm keeps 2 of those: norms
 *   9,1,8,7 -> {1,3}.
 * Ratio field: 1 - (1 - 0.5)(1 - 0.5) = 0.75. */
static void test_composed(void)
{
    static const struct {
        const char *spec, *want;
    } cases[] = {{"composed[knorm:0.5,streaming_llm:0.5]", "1,7"}, {"composed[streaming_llm:0.5,knorm:0.5]", "1,3"}};
    const float norms[8] = {9, 1, 8, 7, 6, 2, 3, 4};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        test_layer t;
        if (layer_init(&t, 8, 1, 7, ROW_WIDTH)) return;
        for (int h = 0; h < N_HEAD; h++)
            for (int j = 0; j < 8; j++) set_key(&t, 0, h, j, 0.f, norms[j]);
        pk_press *press = press_from(cases[c].spec, NULL);
        if (press) {
            CHECK(fabs(press->ratio - 0.75) < 1e-12, "%s: ratio %g, want 0.75", cases[c].spec, press->ratio);
            compress_ok(press, &t, cases[c].spec);
            for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, cases[c].want, cases[c].spec);
            expect_memory_released(&t, cases[c].spec);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- decoding ---------------------------------------------------------- */

/* decoding(knorm):every=2,target=3. The press records query rows as wide as
 * the model it was built for (n_embd of the bundled model), so the view's
 * rows are that wide here.
 * Layer 0 starts with 6 entries, key norms by position 5, 1, 4, 2, 6, 3.
 *   a prefill call (6 query rows) is not a generated token: nothing happens;
 *   generated token 1 (one row at position 5): 1 < every, nothing happens;
 *   position 6 is appended with norm 0.5;
 *   generated token 2 (one row at position 6): cut to 3 by knorm:
 *     norms 0.5 (6), 1 (1), 2 (3) -> {1,3,6}. Layer 1 is not touched. */
static void test_decoding(const pikv_model *model)
{
    const int width = pikv_model_config(model)->n_embd;
    test_layer t;
    if (layer_init(&t, 6, 6, 0, width)) return;
    const float norms[6] = {5, 1, 4, 2, 6, 3};
    for (int h = 0; h < N_HEAD; h++)
        for (int j = 0; j < 6; j++) set_key(&t, 0, h, j, norms[j], 0.f);
    pk_press *press = press_from("decoding(knorm):every=2,target=3", model);
    if (press) {
        CHECK(press->caps & PK_PRESS_WHILE_DECODING, "decoding acts while generating");
        CHECK(!press->ops->decides_next(press, 0, 6), "decoding: a prefill call is not due to decide");
        int rc = layer_decode_step(press, &t);
        CHECK(rc == 0 && pk_kv_at(&t.kv, 0, 0)->len == 6, "decoding: the prefill call must not cut (len %d)",
              pk_kv_at(&t.kv, 0, 0)->len);

        t.view.n_q = 1;
        t.view.q_pos0 = 5;
        CHECK(!press->ops->decides_next(press, 0, 1), "decoding: generated token 1 is not due to decide");
        rc = layer_decode_step(press, &t);
        CHECK(rc == 0, "decoding first token: %s", pikv_last_error());
        for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, "0,1,2,3,4,5", "decoding after 1 token");

        if (layer_append(&t, 6) == 0) {
            for (int h = 0; h < N_HEAD; h++) set_key(&t, 0, h, 6, 0.5f, 0.f);
            t.view.q_pos0 = 6;
            CHECK(press->ops->decides_next(press, 0, 1) && !press->ops->decides_next(press, 0, 6) &&
                      !press->ops->decides_next(press, 1, 1),
                  "decoding: generated token 2 is due at layer 0, not for a prompt nor at layer 1 (which saw none)");
            rc = layer_decode_step(press, &t);
            CHECK(rc == 0, "decoding second token: %s", pikv_last_error());
            for (int h = 0; h < N_HEAD; h++) {
                expect_kept(&t, 0, h, "1,3,6", "decoding after 2 tokens");
                expect_kept(&t, 1, h, "0,1,2,3,4,5,6", "decoding leaves other layers alone");
            }
            expect_memory_released(&t, "decoding");
        }
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* ---- ratio 0 ----------------------------------------------------------- */

/* At ratio 0 n_kept = floor(L) = L: every press keeps all 6 entries of every
 * head, whatever the keys, values and queries say. */
static void test_ratio_zero(const pikv_model *model)
{
    static const char *const specs[] = {
        "none", "knorm", "streaming_llm:0", "snapkv:0,window=2", "tova", "observed_attention",
        "expected_attention:0,sink=1", "random:0,seed=3", "keydiff", "adakv(knorm)", "adakv(snapkv):0,alpha=0.5",
        "pyramidkv:0,window=2", "chunkkv(knorm):0,chunk=2", "composed[knorm:0,snapkv:0]",
        "per_layer(keydiff):ratios=0/0/0/0/0/0"};
    for (size_t c = 0; c < sizeof specs / sizeof *specs; c++) {
        if (!model && strncmp(specs[c], "per_layer", 9) == 0) continue;
        test_layer t;
        if (layer_init(&t, 6, 6, 0, ROW_WIDTH)) return;
        for (int h = 0; h < N_HEAD; h++)
            for (int j = 0; j < 6; j++) {
                set_key(&t, 0, h, j, (float)j, (float)(h + 1));
                set_value(&t, 0, h, j, 1.f, (float)j);
                set_query(&t, j, h, 0.5f, (float)(j - 2));
            }
        pk_press *press = press_from(specs[c], model);
        if (press) {
            CHECK(press->ratio == 0, "%s: ratio %g, want 0", specs[c], press->ratio);
            compress_ok(press, &t, specs[c]);
            for (int h = 0; h < N_HEAD; h++) expect_kept(&t, 0, h, "0,1,2,3,4,5", specs[c]);
            expect_memory_released(&t, specs[c]);
        }
        pk_press_destroy(press);
        layer_free(&t);
    }
}

/* ---- memory accounting ------------------------------------------------- */

/* One entry of head_dim 2 costs 2 * 2 floats + one int32 position = 20 bytes.
 * 2 layers x 2 heads x 5 entries = 20 entries = 400 bytes; knorm:0.5 cuts
 * layer 0's heads to 2 each: 2*2 + 2*5 = 14 entries = 280 bytes. */
static void test_memory_accounting(void)
{
    test_layer t;
    if (layer_init(&t, 5, 1, 4, ROW_WIDTH)) return;
    CHECK(pk_kv_entry_bytes(&t.kv) == 20, "entry bytes %zu, want 20", pk_kv_entry_bytes(&t.kv));
    CHECK(pk_kv_bytes(&t.kv) == 400, "bytes before %zu, want 400", pk_kv_bytes(&t.kv));
    pk_press *press = press_from("knorm:0.5", NULL);
    if (press) {
        compress_ok(press, &t, "knorm for memory");
        CHECK(pk_kv_bytes(&t.kv) == 280, "bytes after %zu, want 280", pk_kv_bytes(&t.kv));
        for (int h = 0; h < N_HEAD; h++)
            CHECK(pk_kv_at(&t.kv, 0, h)->cap == 2, "head %d cap %d, want 2", h, pk_kv_at(&t.kv, 0, h)->cap);
    }
    pk_press_destroy(press);
    layer_free(&t);
}

/* PK_PRESS_ENTRY_FREE is a promise that a press reads no key, value or
 * query: each press that makes it decides the same on a layer of zeros and
 * on one whose entries and queries are all NaN, and a press that reads its
 * keys (knorm) does not make it. 6 x 6 heads, for duo's pattern of the
 * bundled model. */
static void test_entry_free(const pikv_model *model)
{
    static const char *const specs[] = {"none", "streaming_llm:0.5", "duo:0.5", "composed[streaming_llm:0.2,duo:0.5]"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        pk_press *a = press_from(specs[i], model), *b = press_from(specs[i], model);
        test_layer zeros, nans;
        if (!a || !b || test_layer_init(&zeros, 6, 6, 8, 400, 4, 396, 48) ||
            test_layer_init(&nans, 6, 6, 8, 400, 4, 396, 48)) {
            CHECK(0, "%s: setup: %s", specs[i], pikv_last_error());
            return;
        }
        for (int h = 0; h < 36; h++)
            for (int j = 0; j < 400 * 8; j++)
                ((float *)(void *)nans.kv.heads[h].k)[j] = ((float *)(void *)nans.kv.heads[h].v)[j] = NAN;
        for (int j = 0; j < 4 * 48; j++) nans.q[j] = NAN;
        int same = layer_compress(a, &zeros) == 0 && layer_compress(b, &nans) == 0;
        for (int h = 0; same && h < 6; h++) {
            const pk_kv_head *x = pk_kv_head_at(&zeros.kv, 0, h), *y = pk_kv_head_at(&nans.kv, 0, h);
            same = x->len == y->len && x->recent == y->recent && memcmp(x->pos, y->pos, (size_t)x->len * 4) == 0;
        }
        CHECK(same && (a->caps & PK_PRESS_SEQUENCE || a->caps & PK_PRESS_ENTRY_FREE),
              "%s: declared entry-free, but decides differently on NaN entries (or is not declared)", specs[i]);
        layer_free(&zeros);
        layer_free(&nans);
        pk_press_destroy(a);
        pk_press_destroy(b);
    }
    pk_press *k = press_from("knorm:0.5", model);
    CHECK(k && !(k->caps & PK_PRESS_ENTRY_FREE), "knorm reads its keys and must not be declared entry-free");
    pk_press_destroy(k);
}

/* A value in [-1, 1) from a xorshift state. */
static float next_uniform(uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return (float)(*state >> 8) / (float)(1u << 23) - 1.f;
}

/* PK_PRESS_MEASURED is a promise that a press reads keys, values and queries
 * only through the view's measures: each press that makes it decides on a
 * layer whose entries and queries are all NaN, but whose view takes its
 * measures from a copy holding real values, exactly what it decides on that
 * copy. Presses that read rows themselves (keydiff) or draw their choice
 * (random) must not make it. 2 x 6 heads of 8 dimensions, 300 entries, 80 query rows at the end. */
static void test_measured(void)
{
    static const char *const specs[] = {"knorm:0.5", "snapkv:0.5", "snapkv:ratio=0.6,window=8,kernel=3", "tova:0.5",
                                        "observed_attention:0.5", "expected_attention:0.5", "pyramidkv:0.5",
                                        "adakv(snapkv):0.5", "chunkkv(knorm):0.5",
                                        "moe_router:0.5", "moe_router:ratio=0.5,router=pikv,window=16",
                                        "moe_router:ratio=0.5,router=hierarchical,experts=8,top_k=1"};
    enum { LAYERS = 2, HEADS = 6, DIM = 8, LEN = 300, ROWS = 80 };
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        pk_press *a = press_from(specs[i], NULL), *b = press_from(specs[i], NULL);
        test_layer real, nans;
        if (!a || !b || test_layer_init(&real, LAYERS, HEADS, DIM, LEN, ROWS, LEN - ROWS, HEADS * DIM) ||
            test_layer_init(&nans, LAYERS, HEADS, DIM, LEN, ROWS, LEN - ROWS, HEADS * DIM)) {
            CHECK(0, "%s: setup: %s", specs[i], pikv_last_error());
            pk_press_destroy(a);
            pk_press_destroy(b);
            return;
        }
        uint32_t state = 12345u + (uint32_t)i;
        for (int h = 0; h < LAYERS * HEADS; h++)
            for (int j = 0; j < LEN * DIM; j++) {
                ((float *)(void *)real.kv.heads[h].k)[j] = next_uniform(&state);
                ((float *)(void *)real.kv.heads[h].v)[j] = next_uniform(&state);
                ((float *)(void *)nans.kv.heads[h].k)[j] = ((float *)(void *)nans.kv.heads[h].v)[j] = NAN;
            }
        for (int j = 0; j < ROWS * HEADS * DIM; j++) {
            real.q[j] = 2.f * next_uniform(&state);
            nans.q[j] = NAN;
        }
        pk_press_measures from_real = pk_press_host_measures;
        from_real.ctx = &real.view;
        nans.view.measures = &from_real;
        /* The NaN layer first: its measures read the real layer before that is compressed. */
        int same = layer_compress(b, &nans) == 0 && layer_compress(a, &real) == 0, dropped = 0;
        for (int h = 0; same && h < HEADS; h++) {
            const pk_kv_head *x = pk_kv_head_at(&real.kv, 0, h), *y = pk_kv_head_at(&nans.kv, 0, h);
            same = x->len == y->len && x->recent == y->recent && memcmp(x->pos, y->pos, (size_t)x->len * 4) == 0;
            dropped += LEN - x->len;
        }
        CHECK(same && dropped > 0 && (a->caps & PK_PRESS_MEASURED),
              "%s: declared measured, but decides differently when its rows are NaN and its measures real (or "
              "is not declared, or dropped nothing)",
              specs[i]);
        layer_free(&real);
        layer_free(&nans);
        pk_press_destroy(a);
        pk_press_destroy(b);
    }
    static const char *const readers[] = {"keydiff:0.5", "random:0.5"};
    for (size_t i = 0; i < sizeof readers / sizeof *readers; i++) {
        pk_press *p = press_from(readers[i], NULL);
        CHECK(p && !(p->caps & PK_PRESS_MEASURED), "%s must not be declared measured", readers[i]);
        pk_press_destroy(p);
    }
}

int main(void)
{
    test_knorm();
    test_streaming_llm();
    test_snapkv();
    test_tova();
    test_observed_attention();
    test_expected_attention_value_norms();
    test_expected_attention_statistics();
    test_random();
    test_keydiff();
    test_adakv();
    test_pyramidkv();
    test_chunkkv();
    test_composed();
    test_memory_accounting();
    test_measured();

    pikv_model *model = pikv_model_load(model_dir);
    CHECK(model != NULL, "load %s: %s", model_dir, pikv_last_error());
    if (model) {
        CHECK(pikv_model_config(model)->n_layer == 6, "the bundled model has 6 layers");
        test_per_layer(model);
        test_decoding(model);
        test_entry_free(model);
    }
    test_ratio_zero(model);
    pikv_model_free(model);
    return check_done("press_scores");
}
