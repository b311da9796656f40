/* The GPU group's host logic (engine/cuda/group_cuda.c) without a GPU: the
 * group is linked against a stand-in for the CUDA engine whose sessions only
 * keep per-head lengths, rings and what each keep was asked to do. For 1 to
 * 5 GPUs and 1 to 4 sequences of a cache shaped like DuoAttention's (rings of
 * 68 entries beside full heads of unequal lengths): every keep the group asks
 * for is valid (ascending slots, a ring whole on one GPU or absent, the GPU
 * that takes a head's new entries holding its last one, exactly one such
 * GPU), every entry is held by exactly one GPU, the report adds up to the
 * cache, and EPLB's load max/mean is no worse than an equal count of heads.
 * A press whose kept counts differ between GPUs is refused, and so are decode
 * calls before placement. The real engine's part is test_cuda_group's. */
#include "engine/cuda/group_cuda.h"
#include "engine/cuda/press_cuda.h"
#include "util/error.h"
#include "../check.h"
#include "pikv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SEQ = 4, MAX_LAYERS = 16, MAX_HEADS = 16, MAX_RANKS = 5, PROMPT = 300, RING = 68 };

/* A stand-in session: what each head holds, and how keeps left it. */
struct pk_cuda_session {
    int len[MAX_SEQ][MAX_LAYERS][MAX_HEADS], ring[MAX_SEQ][MAX_LAYERS][MAX_HEADS];
    int tail[MAX_SEQ][MAX_LAYERS][MAX_HEADS];
    int exchange_ranks;
    long entries;
};

static int n_layer, n_head, vocab, bad_keeps, skew_rank = -1;

/* The shape of the cache after a press: head h of layer l in sequence seq is a ring or keeps PROMPT - 7h entries. */
static int is_ring(int seq, int l, int h) { return (l + h + seq) % 3 == 0; }
static int kept(int seq, int l, int h) { return is_ring(seq, l, h) ? RING : PROMPT - 7 * h; }

int pk_cuda_device_count(void) { return 1; }
int pk_cuda_use_device(int device) { return device == 0 ? 0 : pk_fail("no GPU %d", device); }
static int exchange_stub;
pk_cuda_exchange *pk_cuda_exchange_new(int n_rank, const int *devices, pk_cuda_transport transport)
{
    (void)n_rank, (void)devices;
    return transport == PK_CUDA_HOST_COPIES ? (pk_cuda_exchange *)&exchange_stub : NULL;
}
void pk_cuda_exchange_free(pk_cuda_exchange *x) { (void)x; }
static int no_exchange(void *ctx, const float *states, float *gathered, size_t count, void *stream)
{
    (void)ctx, (void)states, (void)gathered, (void)count, (void)stream;
    return 0;
}
pk_cuda_exchange_fn pk_cuda_exchange_function(const pk_cuda_exchange *x)
{
    (void)x;
    return no_exchange;
}
pk_cuda_exchange_rank *pk_cuda_exchange_rank_of(pk_cuda_exchange *x, int rank)
{
    (void)x, (void)rank;
    return NULL;
}
void pk_cuda_exchange_abort(pk_cuda_exchange *x) { (void)x; }

pk_cuda_session *pk_cuda_session_new(const pikv_model *m, const pk_cuda_params *p)
{
    (void)m, (void)p;
    return calloc(1, sizeof(pk_cuda_session));
}
void pk_cuda_session_free(pk_cuda_session *s) { free(s); }

/* The GPU's own rule (press_cuda.c) is not linked here; the group is only
 * run with presses that pass it. */
int pk_cuda_refuse_one_sequence(const pk_press *p, const char *where)
{
    (void)where;
    return p && (p->caps & (PK_PRESS_WHILE_DECODING | PK_PRESS_ROUTES_QUERIES)) ? pk_fail("one sequence only") : 0;
}

int pk_cuda_prefill_press(pk_cuda_session *s, const pikv_model *m, int seq, const int32_t *ids, int n, pk_press *press,
                          float *logits, pk_cuda_press_stats *st)
{
    (void)m, (void)ids, (void)n, (void)press, (void)logits, (void)st;
    /* The group prefills rank 0, then rank 1, ...: with two ranks, odd calls are rank 1's. */
    static int calls;
    const int skew = skew_rank >= 0 && calls++ % 2 == skew_rank;
    for (int l = 0; l < n_layer; l++)
        for (int h = 0; h < n_head; h++) {
            s->ring[seq][l][h] = is_ring(seq, l, h);
            s->len[seq][l][h] = kept(seq, l, h) - (skew && l == 1 && h == 2);
        }
    return 0;
}

int pk_cuda_head_length(const pk_cuda_session *s, int seq, int layer, int head, int *held_blocks)
{
    (void)held_blocks;
    return s->len[seq][layer][head];
}
int pk_cuda_head_streams(const pk_cuda_session *s, int seq, int layer, int head) { return s->ring[seq][layer][head]; }

int pk_cuda_keep_shard(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads, const int *tail)
{
    for (int h = 0; h < n_head; h++) {
        const int len = s->len[seq][layer][h];
        const pk_cuda_head_keep *k = &heads[h];
        int ok = k->n >= 0 && k->n <= len;
        for (int j = 0; ok && j < k->n; j++)
            ok = k->slots[j] >= 0 && k->slots[j] < len && (!j || k->slots[j] > k->slots[j - 1]);
        if (s->ring[seq][layer][h]) ok = ok && (tail[h] ? k->n == len : k->n == 0);
        if (tail[h]) ok = ok && k->n > 0 && k->slots[k->n - 1] == len - 1;
        bad_keeps += !ok;
        s->len[seq][layer][h] = k->n;
        s->tail[seq][layer][h] = tail[h];
        s->entries += k->n;
    }
    return 0;
}

int pk_cuda_set_exchange(pk_cuda_session *s, int n_rank, pk_cuda_exchange_fn exchange, void *ctx)
{
    (void)exchange, (void)ctx;
    s->exchange_ranks = n_rank;
    return 0;
}

void pk_cuda_get_stats(const pk_cuda_session *s, pk_cuda_stats *st)
{
    memset(st, 0, sizeof *st);
    st->kv_bytes_in_use = (size_t)s->entries * 512;
}

int pk_cuda_decode(pk_cuda_session *s, const int32_t *ids, int n_seq, float *logits)
{
    (void)s, (void)ids;
    for (int i = 0; logits && i < n_seq * vocab; i++) logits[i] = (float)(i % 97);
    return 0;
}

int pk_cuda_decode_greedy_steps(pk_cuda_session *s, const int32_t *ids, int n_seq, int steps, int32_t *chosen)
{
    (void)s, (void)ids;
    for (int i = 0; i < n_seq * steps; i++) chosen[i] = i;
    return 0;
}

static void check_placement(const pikv_model *m, int n_gpu, int n_seq)
{
    char what[64];
    snprintf(what, sizeof what, "%d GPUs, %d sequences", n_gpu, n_seq);
    const pk_cuda_group_params p = {.n_gpu = n_gpu, .one_device = 1, .session = {.max_seq = n_seq},
                                    .policy = PK_PLACE_EPLB};
    pk_cuda_group *g = pk_cuda_group_new(m, &p);
    CHECK(g != NULL, "%s: %s", what, pikv_last_error());
    if (!g) return;
    int32_t ids[PROMPT] = {0};
    int rc = pk_cuda_group_decode(g, ids, n_seq, NULL) == -1 && strstr(pikv_last_error(), "place") ? 0 : -1;
    CHECK(rc == 0, "%s: a decode before placement was not refused", what);
    for (int b = 0; rc == 0 && b < n_seq; b++) rc = pk_cuda_group_prefill(g, b, ids, PROMPT, NULL, NULL);
    pk_cuda_group_report rep;
    bad_keeps = 0;
    if (rc == 0) rc = pk_cuda_group_place(g, n_seq, &rep);
    CHECK(rc == 0 && bad_keeps == 0, "%s: placement failed (%s) or asked for %d invalid keeps", what,
          rc ? pikv_last_error() : "", bad_keeps);
    if (rc) {
        pk_cuda_group_free(g);
        return;
    }
    long want = 0, held = 0;
    int wrong_heads = 0;
    for (int b = 0; b < n_seq; b++)
        for (int l = 0; l < n_layer; l++)
            for (int h = 0; h < n_head; h++) {
                int sum = 0, tails = 0;
                for (int r = 0; r < n_gpu; r++) {
                    const pk_cuda_session *s = pk_cuda_group_session(g, r);
                    sum += s->len[b][l][h];
                    tails += s->tail[b][l][h];
                }
                want += kept(b, l, h);
                wrong_heads += sum != kept(b, l, h) || tails != 1;
            }
    int exchanges = 1;
    for (int r = 0; r < n_gpu; r++) {
        held += rep.entries[r];
        exchanges &= pk_cuda_group_session(g, r)->exchange_ranks == n_gpu;
    }
    CHECK(wrong_heads == 0, "%s: %d heads are not held once over the GPUs with one GPU taking new entries", what,
          wrong_heads);
    CHECK(held == want, "%s: the report holds %ld entries, the cache %ld", what, held, want);
    CHECK(exchanges, "%s: not every GPU's exchange was started over %d ranks", what, n_gpu);
    CHECK(rep.imbalance <= rep.equal_imbalance + 1e-9 && rep.imbalance >= 1.0,
          "%s: EPLB's load max/mean %.3f against an equal count's %.3f", what, rep.imbalance, rep.equal_imbalance);
    printf("%s: load max/mean %.3f with EPLB, %.3f with an equal count of heads, %ld caches cut\n", what,
           rep.imbalance, rep.equal_imbalance, rep.split_shards);
    int32_t chosen[4 * MAX_SEQ];
    CHECK(pk_cuda_group_decode_greedy_steps(g, ids, n_seq, 4, chosen) == 0, "%s: decode: %s", what,
          pikv_last_error());
    CHECK(pk_cuda_group_prefill(g, 0, ids, PROMPT, NULL, NULL) == -1, "%s: a prefill after placement was accepted",
          what);
    pk_cuda_group_free(g);
}

int main(void)
{
    pikv_model *m = pikv_model_load("models/pikv-ref-14m");
    CHECK(m != NULL, "model: %s", pikv_last_error());
    if (!m) return check_done("test_group_host");
    const pikv_config *c = pikv_model_config(m);
    n_layer = c->n_layer, n_head = c->n_head, vocab = c->vocab_size;
    CHECK(n_layer <= MAX_LAYERS && n_head <= MAX_HEADS, "the bundled model is larger than the stand-in holds");
    for (int gpus = 1; gpus <= MAX_RANKS; gpus++)
        for (int seqs = 1; seqs <= MAX_SEQ; seqs++) check_placement(m, gpus, seqs);
    /* Rank 1's press keeps one entry fewer in one head: the group must refuse to place such caches. */
    skew_rank = 1;
    const pk_cuda_group_params p = {.n_gpu = 2, .one_device = 1, .session = {.max_seq = 1}, .policy = PK_PLACE_EPLB};
    pk_cuda_group *g = pk_cuda_group_new(m, &p);
    int32_t ids[PROMPT] = {0};
    CHECK(g && pk_cuda_group_prefill(g, 0, ids, PROMPT, NULL, NULL) == -1 &&
              strstr(pikv_last_error(), "must not differ"),
          "a press whose kept counts differ between GPUs was not refused (%s)", pikv_last_error());
    pk_cuda_group_free(g);
    pikv_model_free(m);
    return check_done("test_group_host");
}
