/* Query-time routing on the CUDA engine (engine/cuda/routing_cuda.c) without
 * a GPU: the glue is linked against a stand-in for the engine that holds each
 * head's keys and the slot masks sent to it, and runs "calls" the way the
 * engine does: the call's keys are written first, then every layer's query
 * rows go to the routing callback, which returns a mask per (row, head).
 *
 * The route table is the real one: moe_router with route=1 compresses a
 * 300-token prompt of the bundled model on the CPU engine, and the stand-in
 * starts from the entries the CPU's cache kept. Through a 6-token call and 20
 * one-token calls with random queries, for every (row, layer, head):
 *  - the slots the GPU's attention would read, by the kernel's rule (a slot
 *    past the routed ones, or one whose mask shares a bit with the row's),
 *    are exactly those the CPU's routed attention gathers (pk_route_select);
 *  - the statistics count every row, the entries read and visible as the
 *    CPU's selection does, and on sampled positions the missed attention
 *    mass equals a float64 softmax over the stand-in's own keys;
 *  - the bytes counted to the host are the queries plus the keys and values
 *    read back for sampled rows.
 * Greedy steps are one-token calls, each fed the choice before it, and stop
 * at a failed call. A table the press has since rewritten for another cache
 * is refused at the next call, and a router over more experts than the masks hold is refused.
 * The kernels' side of the rule is test_kernels_host's; the whole path is
 * test_cuda_session's. */
#include "engine/cuda/routing_cuda.h"
#include "engine/session.h"
#include "model/model.h"
#include "router/route.h"
#include "util/error.h"
#include "../check.h"
#include "tokens.h"
#include "pikv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_LAYERS = 8, MAX_HEADS = 8, MAX_POS = 1024, MAX_DIM = 128, PROMPT = 300, CALL = 6, STEPS = 20,
       MAX_FED = 16 };

static const char *const MODEL = "models/pikv-ref-14m";

/* A stand-in session of one sequence: each head's keys, slot by slot, and
 * what routing the glue set up. */
struct pk_cuda_session {
    int n_layer, n_head, head_dim, pos, rows_in_call, routing, route_len[MAX_LAYERS][MAX_HEADS];
    int len[MAX_LAYERS][MAX_HEADS];
    float *keys[MAX_LAYERS][MAX_HEADS]; /* [MAX_POS][head_dim] */
    uint64_t slot_mask[MAX_LAYERS][MAX_HEADS][MAX_POS];
    pk_cuda_route_fn route;
    void *ctx;
    int vocab, calls, fail_at;        /* pk_cuda_forward: vocabulary, calls made, the call that fails (-1: none) */
    int32_t fed[MAX_FED];             /* the token of each one-token call */
};

/* The next token after `t` in the stand-in's calls: one logit is 1, the rest 0. */
static int32_t stand_in_next(int32_t t, int vocab) { return (int32_t)(((int64_t)t * 37 + 5) % vocab); }

/* A call of the stand-in: records its token and makes its logits. */
int pk_cuda_forward(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits)
{
    if (seq != 0 || n != 1 || all_logits || s->calls >= MAX_FED) return pk_fail("stand-in forward: %d rows", n);
    if (s->calls == s->fail_at) return pk_fail("stand-in forward: call %d fails", s->calls);
    s->fed[s->calls++] = ids[0];
    memset(logits, 0, (size_t)s->vocab * sizeof *logits);
    logits[stand_in_next(ids[0], s->vocab)] = 1.f;
    return 0;
}

int pk_cuda_position(const pk_cuda_session *s, int seq) { return seq == 0 ? s->pos : -1; }
int pk_cuda_head_length(const pk_cuda_session *s, int seq, int layer, int head, int *held_blocks)
{
    (void)seq;
    if (held_blocks) *held_blocks = (s->len[layer][head] + 15) / 16;
    return s->len[layer][head];
}
/* As the engine: inside the callback the call's own rows are held too. */
int pk_cuda_read_heads(pk_cuda_session *s, int seq, int layer, int head0, int n_heads, int len, float *k, float *v)
{
    (void)seq;
    for (int i = 0; i < n_heads; i++) {
        if (len > s->len[layer][head0 + i] + s->rows_in_call)
            return pk_fail("stand-in read: layer %d head %d holds fewer than %d", layer, head0 + i, len);
        memcpy(k + (size_t)i * len * s->head_dim, s->keys[layer][head0 + i], (size_t)len * s->head_dim * sizeof *k);
        memset(v + (size_t)i * len * s->head_dim, 0, (size_t)len * s->head_dim * sizeof *v);
    }
    return 0;
}
int pk_cuda_route_begin(pk_cuda_session *s, int seq, pk_cuda_route_fn route, void *ctx)
{
    if (seq != 0 || !route) return pk_fail("stand-in routing: sequence %d", seq);
    s->routing = 1;
    s->route = route;
    s->ctx = ctx;
    memset(s->route_len, 0, sizeof s->route_len);
    return 0;
}
int pk_cuda_route_head(pk_cuda_session *s, int layer, int head, const uint64_t *masks, int n)
{
    if (!s->routing || n < 0 || n > s->len[layer][head]) return pk_fail("stand-in routing: %d masks", n);
    memcpy(s->slot_mask[layer][head], masks, (size_t)n * sizeof *masks);
    s->route_len[layer][head] = n;
    return 0;
}
void pk_cuda_route_end(pk_cuda_session *s) { s->routing = 0; }

static float uniform(void) { return (float)rand() / RAND_MAX * 2.f - 1.f; }

/* Attention mass of q over keys[0..visible-1] (float64 softmax at `scale`)
 * on the entries whose `read` flag is 0. */
static double missed_reference(const float *q, const float *keys, int hd, int visible, const unsigned char *read,
                               double scale)
{
    double *p = malloc((size_t)visible * sizeof *p), mx = -INFINITY, sum = 0, missed = 0;
    for (int j = 0; j < visible; j++) {
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += (double)q[d] * keys[(size_t)j * hd + d];
        p[j] = dot * scale;
        if (p[j] > mx) mx = p[j];
    }
    for (int j = 0; j < visible; j++) sum += p[j] = exp(p[j] - mx);
    for (int j = 0; j < visible; j++)
        if (!read[j]) missed += p[j] / sum;
    free(p);
    return missed;
}

/* One call of R rows: new keys, then every layer's queries through the
 * routing, each row's reads checked against the CPU's selection. */
static void run_call(pk_cuda_session *s, const pikv_config *c, pk_route_table *t, int R, double *expect_read,
                     double *expect_visible, double *expect_missed, long *expect_sampled, size_t *expect_bytes)
{
    const int H = c->n_head, hd = c->head_dim, C = c->n_embd;
    float *q = malloc((size_t)R * C * sizeof *q);
    uint64_t *masks = malloc((size_t)R * H * sizeof *masks);
    int *idx = malloc(MAX_POS * sizeof *idx);
    unsigned char *read = malloc(MAX_POS);
    pk_kv_head plain = {.pos = NULL};
    int32_t *positions = malloc(MAX_POS * sizeof *positions);
    for (int j = 0; j < MAX_POS; j++) positions[j] = j;
    plain.pos = positions;
    int sampled = 0;
    for (int r = 0; r < R; r++) sampled |= pk_route_sampled(t, s->pos + r);
    int wrong = 0, worst_row = -1;
    double worst_missed = 0;
    for (int l = 0; l < c->n_layer; l++) {
        for (int h = 0; h < H; h++)
            for (int r = 0; r < R; r++)
                for (int d = 0; d < hd; d++) s->keys[l][h][(size_t)(s->len[l][h] + r) * hd + d] = uniform();
        for (int i = 0; i < R * C; i++) q[i] = uniform();
        s->rows_in_call = R;
        const int rc = s->route(s->ctx, l, q, R, masks);
        s->rows_in_call = 0;
        CHECK(rc == 0, "routing callback, layer %d: %s", l, pikv_last_error());
        *expect_bytes += (size_t)R * C * sizeof(float);
        for (int h = 0; h < H; h++) {
            const int before = s->len[l][h];
            if (sampled) *expect_bytes += 2 * (size_t)(before + R) * hd * sizeof(float);
            plain.len = before + R;
            for (int r = 0; r < R; r++) {
                const float *qr = q + (size_t)r * C + (size_t)h * hd;
                const int visible = before + r + 1;
                int n_visible;
                const int n = pk_route_select(t, l, h, &plain, qr, s->pos + r, visible, idx, &n_visible);
                memset(read, 0, (size_t)visible);
                for (int i = 0; i < n; i++) read[idx[i]] = 1;
                const uint64_t row = masks[(size_t)r * H + h];
                for (int j = 0; j < visible; j++) {
                    const int by_mask = j >= s->route_len[l][h] || (s->slot_mask[l][h][j] & row) != 0;
                    if (by_mask != read[j] && wrong++ == 0) worst_row = r;
                }
                wrong += !(row >> 63);
                *expect_read += n;
                *expect_visible += n_visible;
                if (pk_route_sampled(t, s->pos + r)) {
                    const double m = missed_reference(qr, s->keys[l][h], hd, visible, read,
                                                      pk_attention_scale(c, l));
                    *expect_missed += m;
                    (*expect_sampled)++;
                    if (m > worst_missed) worst_missed = m;
                }
            }
        }
    }
    CHECK(wrong == 0, "a call of %d rows at %d: %d slots read otherwise than the CPU's selection (first in row %d)", R,
          s->pos, wrong, worst_row);
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < H; h++) s->len[l][h] += R;
    s->pos += R;
    free(q);
    free(masks);
    free(idx);
    free(read);
    free(positions);
}

/* The stand-in's sequence as the CPU's compressed cache left it. */
static void load_from(pk_cuda_session *s, const pikv_session *cpu, const pikv_config *c)
{
    s->n_layer = c->n_layer;
    s->n_head = c->n_head;
    s->head_dim = c->head_dim;
    s->pos = pikv_session_position(cpu);
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            if (!s->keys[l][h]) s->keys[l][h] = malloc((size_t)MAX_POS * c->head_dim * sizeof(float));
            s->len[l][h] = pikv_session_kv_read(cpu, l, h, 0, s->keys[l][h], MAX_POS);
        }
}

int main(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    CHECK(m != NULL, "%s: %s", MODEL, pikv_last_error());
    if (!m) return check_done("test_routing_host");
    const pikv_config *c = pikv_model_config(m);
    CHECK(c->n_layer <= MAX_LAYERS && c->n_head <= MAX_HEADS && c->head_dim <= MAX_DIM, "model shape");
    srand(7);
    int32_t prompt[PROMPT];
    fill_tokens(prompt, PROMPT, c->vocab_size, 31);
    pikv_session *cpu = pikv_session_new(m, 2);
    pikv_press *p = pikv_press_new("moe_router:ratio=0.5,window=16,route=1,sample=3", m, MODEL);
    CHECK(cpu && p && pikv_prefill(cpu, prompt, PROMPT, p, NULL) == 0, "CPU prefill: %s", pikv_last_error());
    static pk_cuda_session s;
    load_from(&s, cpu, c);
    pk_route_table *t = p->ops->routing(p);
    pk_cuda_routing *r = pk_cuda_routing_new(&s, c, 0, p);
    CHECK(r != NULL && s.routing, "routing: %s", pikv_last_error());
    int routed = 0, masked = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            routed += s.route_len[l][h] == s.len[l][h];
            for (int j = 0; j < s.route_len[l][h]; j++) masked += !(s.slot_mask[l][h][j] >> 63);
        }
    CHECK(routed == c->n_layer * c->n_head && masked > 0,
          "%d of %d heads have every kept slot routed, %d slots routed to experts", routed, c->n_layer * c->n_head,
          masked);
    if (r) {
        pk_route_stats before = t->stats;
        double read = 0, visible = 0, missed = 0;
        long sampled = 0;
        size_t bytes = 0;
        run_call(&s, c, t, CALL, &read, &visible, &missed, &sampled, &bytes);
        for (int i = 0; i < STEPS; i++) run_call(&s, c, t, 1, &read, &visible, &missed, &sampled, &bytes);
        const pk_route_stats *st = &t->stats;
        const long queries = (long)(CALL + STEPS) * c->n_layer * c->n_head;
        CHECK(st->queries - before.queries == queries, "%ld queries recorded, %ld run", st->queries - before.queries,
              queries);
        CHECK(st->entries_read - before.entries_read == read && st->entries_visible - before.entries_visible == visible,
              "entries read %.0f of %.0f recorded, %.0f of %.0f by the CPU's selection",
              st->entries_read - before.entries_read, st->entries_visible - before.entries_visible, read, visible);
        CHECK(read < 0.9 * visible, "the routing skipped little: %.0f of %.0f read", read, visible);
        CHECK(st->sampled - before.sampled == sampled && sampled > 0 &&
                  fabs(st->missed_sum - before.missed_sum - missed) < 1e-5 * (1 + missed),
              "missed mass %.8f over %ld sampled, float64 reference %.8f over %ld",
              st->missed_sum - before.missed_sum, st->sampled - before.sampled, missed, sampled);
        CHECK(pk_cuda_routing_bytes(r) == bytes, "%zu bytes counted to the host, %zu expected",
              pk_cuda_routing_bytes(r), bytes);
        printf("routing: %ld queries, read %.0f of %.0f visible entries as the CPU selects, missed mass %.5f mean "
               "over %ld sampled, %.2f MB to the host\n",
               queries, read, visible, sampled ? missed / sampled : 0, sampled, bytes / 1e6);

        /* Greedy steps: a call a step, each fed the choice before it; a failed call ends them. */
        float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
        int32_t chosen[5], expect = 11;
        s.vocab = c->vocab_size;
        s.fail_at = -1;
        CHECK(logits && pk_cuda_routing_greedy(r, 11, 5, logits, chosen) == 0 && s.calls == 5,
              "greedy steps: %d calls, %s", s.calls, pikv_last_error());
        for (int i = 0; i < 5 && i < s.calls; i++) {
            CHECK(s.fed[i] == expect && chosen[i] == stand_in_next(expect, s.vocab),
                  "greedy step %d fed %d (expected %d), chose %d", i, s.fed[i], expect, chosen[i]);
            expect = chosen[i];
        }
        s.calls = 0;
        s.fail_at = 2;
        CHECK(logits && pk_cuda_routing_greedy(r, 11, 5, logits, NULL) == -1 && s.calls == 2 &&
                  strstr(pikv_last_error(), "call 2 fails"),
              "a failed step: %d calls, %s", s.calls, pikv_last_error());
        free(logits);

        /* The press compresses another cache: its table no longer describes this one. */
        pikv_session_reset(cpu);
        CHECK(pikv_prefill(cpu, prompt, PROMPT, p, NULL) == 0, "second CPU prefill: %s", pikv_last_error());
        float q[MAX_HEADS * MAX_DIM] = {0};
        uint64_t masks[MAX_HEADS];
        CHECK(s.route(s.ctx, 0, q, 1, masks) == -1 && strstr(pikv_last_error(), "no longer describes"),
              "a stale table: %s", pikv_last_error());
        pk_cuda_routing_free(r);
        CHECK(!s.routing, "freeing the routing ends it on the engine");
    }
    pikv_press_free(p);

    /* 64 experts do not fit the masks' 63 bits. */
    pikv_press *wide = pikv_press_new("moe_router:ratio=0.5,window=16,route=1,experts=64,top_k=2", m, MODEL);
    pikv_session_reset(cpu);
    CHECK(wide && pikv_prefill(cpu, prompt, PROMPT, wide, NULL) == 0, "prefill with 64 experts: %s",
          pikv_last_error());
    load_from(&s, cpu, c);
    pk_cuda_routing *w = wide ? pk_cuda_routing_new(&s, c, 0, wide) : NULL;
    CHECK(w == NULL && strstr(pikv_last_error(), "routes over 64 experts: the GPU's route masks hold 63") && !s.routing,
          "64 experts: %s", pikv_last_error());
    pikv_press_free(wide);
    pikv_session_free(cpu);
    for (int l = 0; l < MAX_LAYERS; l++)
        for (int h = 0; h < MAX_HEADS; h++) free(s.keys[l][h]);
    pikv_model_free(m);
    return check_done("test_routing_host");
}
