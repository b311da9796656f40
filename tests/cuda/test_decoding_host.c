/* A press that acts while decoding on the CUDA engine (engine/cuda/
 * decoding_cuda.c) without a GPU: the glue is linked against a stand-in for
 * the engine that holds, for each head, the position of the token in every
 * slot, and makes keys, values and queries from (layer, head, position), so
 * that a slot's rows are known wherever a keep has moved it. The same press,
 * fed the same rows through a float32 host cache in the order the CPU
 * engine's forward pass feeds it (every layer after every call), is the
 * reference.
 *
 * For decoding(knorm), decoding(snapkv) and decoding(expected_attention),
 * through a 300-token prompt, a 5-token call and 40 decoded tokens: after
 * every call each head of the stand-in holds exactly the positions the
 * reference cache holds, in the same order; every keep asked of the engine
 * lists ascending slots it holds; the bytes counted to the host are the
 * calls' queries plus every head's keys and values at each cut and nothing
 * else. Attaching to a sequence that does not hold every token it has seen
 * is refused. The real engine's part is test_cuda_press's. */
#include "engine/cuda/decoding_cuda.h"
#include "model/model.h"
#include "util/error.h"
#include "../check.h"
#include "pikv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_LAYERS = 8, MAX_HEADS = 8, MAX_POS = 2048, PROMPT = 300, STEPS = 40 };

static const char *const MODEL = "models/pikv-ref-14m";

/* A stand-in session of one sequence: the positions each head holds, slot by slot. */
struct pk_cuda_session {
    int n_layer, n_head, head_dim, C, pos, query_rows, query_pos0, bad_keeps;
    int len[MAX_LAYERS][MAX_HEADS];
    int32_t held[MAX_LAYERS][MAX_HEADS][MAX_POS];
};

/* A value in [-1, 1) fixed by its indices. */
static float value_at(unsigned a, unsigned b, unsigned c, unsigned d)
{
    uint64_t x = ((uint64_t)a * 1000003u + b) * 2654435761u + (uint64_t)c * 40503u + d * 97u + 12345u;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (float)((x >> 40) * (2.0 / 16777216.0) - 1.0);
}
static float key_at(int l, int h, int pos, int d) { return value_at((unsigned)l, (unsigned)h, (unsigned)pos, (unsigned)d); }
static float val_at(int l, int h, int pos, int d) { return value_at(100u + l, (unsigned)h, (unsigned)pos, (unsigned)d); }
static float query_at(int l, int pos, int c) { return value_at(200u + l, 0, (unsigned)pos, (unsigned)c); }

int pk_cuda_position(const pk_cuda_session *s, int seq) { return seq == 0 ? s->pos : -1; }
int pk_cuda_head_length(const pk_cuda_session *s, int seq, int layer, int head, int *held_blocks)
{
    (void)seq;
    if (held_blocks) *held_blocks = (s->len[layer][head] + 15) / 16;
    return s->len[layer][head];
}
int pk_cuda_head_streams(const pk_cuda_session *s, int seq, int layer, int head)
{
    (void)s, (void)seq, (void)layer, (void)head;
    return 0;
}
size_t pk_cuda_sequence_bytes(const pk_cuda_session *s, int seq, int n_more)
{
    (void)seq;
    size_t entries = 0;
    for (int l = 0; l < s->n_layer; l++)
        for (int h = 0; h < s->n_head; h++) entries += (size_t)s->len[l][h] + (size_t)n_more;
    return entries * 2 * (size_t)s->head_dim * sizeof(float);
}
int pk_cuda_forward_queries(pk_cuda_session *s, int seq, const int32_t *ids, int n, float *logits, int all_logits)
{
    (void)seq, (void)ids, (void)logits, (void)all_logits;
    for (int l = 0; l < s->n_layer; l++)
        for (int h = 0; h < s->n_head; h++)
            for (int t = 0; t < n; t++) s->held[l][h][s->len[l][h]++] = s->pos + t;
    s->query_rows = n;
    s->query_pos0 = s->pos;
    s->pos += n;
    return 0;
}
int pk_cuda_read_queries(pk_cuda_session *s, int layer, float *queries)
{
    for (int t = 0; t < s->query_rows; t++)
        for (int c = 0; c < s->C; c++) queries[(size_t)t * s->C + c] = query_at(layer, s->query_pos0 + t, c);
    return 0;
}
int pk_cuda_read_heads(pk_cuda_session *s, int seq, int layer, int head0, int n_heads, int len, float *k, float *v)
{
    (void)seq;
    for (int i = 0; i < n_heads; i++)
        for (int j = 0; j < len; j++)
            for (int d = 0; d < s->head_dim; d++) {
                const int pos = s->held[layer][head0 + i][j];
                k[((size_t)i * len + j) * s->head_dim + d] = key_at(layer, head0 + i, pos, d);
                v[((size_t)i * len + j) * s->head_dim + d] = val_at(layer, head0 + i, pos, d);
            }
    return 0;
}
/* A keep moves each head's listed slots (ascending, held) to its first slots. */
int pk_cuda_keep(pk_cuda_session *s, int seq, int layer, const pk_cuda_head_keep *heads)
{
    (void)seq;
    for (int h = 0; h < s->n_head; h++) {
        const pk_cuda_head_keep *k = &heads[h];
        int ok = k->n <= s->len[layer][h] && k->recent == 0;
        for (int i = 0; ok && i < k->n; i++) ok = k->slots[i] < s->len[layer][h] && (i == 0 || k->slots[i] > k->slots[i - 1]);
        if (!ok) {
            s->bad_keeps++;
            return pk_fail("stand-in keep: layer %d head %d: not ascending slots it holds", layer, h);
        }
        for (int i = 0; i < k->n; i++) s->held[layer][h][i] = s->held[layer][h][k->slots[i]];
        s->len[layer][h] = k->n;
    }
    return 0;
}

/* The reference: the press on a host cache fed as the CPU engine feeds it. */
typedef struct {
    pk_kvcache kv;
    pk_keep_set keep;
    float *q;
    int pos;
} reference;

static int reference_call(reference *r, pk_press *press, const pikv_config *c, int n)
{
    if (pk_kv_reserve(&r->kv, n, 0)) return -1;
    float key[256], val[256];
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            pk_kv_head *kh = pk_kv_at(&r->kv, l, h);
            for (int t = 0; t < n; t++) {
                for (int d = 0; d < c->head_dim; d++) {
                    key[d] = key_at(l, h, r->pos + t, d);
                    val[d] = val_at(l, h, r->pos + t, d);
                }
                const int slot = pk_kv_append_slot(kh, n);
                pk_kv_store(&r->kv, kh, slot, key, val);
                kh->pos[slot] = r->pos + t;
            }
        }
    for (int l = 0; l < c->n_layer; l++) {
        for (int t = 0; t < n; t++)
            for (int i = 0; i < c->n_embd; i++) r->q[(size_t)t * c->n_embd + i] = query_at(l, r->pos + t, i);
        const pk_press_view view = {.cfg = c, .layer = l, .q = r->q, .q_stride = c->n_embd, .n_q = n, .q_pos0 = r->pos,
                                    .kv = &r->kv, .backend = &pk_backend_cpu, .scale = pk_attention_scale(c, l)};
        int rc = pk_keep_set_reset(&r->keep, pk_kv_max_len(&r->kv, l));
        if (rc == 0) rc = press->ops->decode_step(press, &view, &r->keep);
        if (rc == 1) rc = pk_kv_apply(&r->kv, l, &r->keep);
        if (rc) return -1;
    }
    r->pos += n;
    return 0;
}

/* Heads whose held positions differ from the reference's. */
static int heads_differ(const pk_cuda_session *s, const reference *r)
{
    int bad = 0;
    for (int l = 0; l < s->n_layer; l++)
        for (int h = 0; h < s->n_head; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&r->kv, l, h);
            bad += kh->len != s->len[l][h] ||
                   memcmp(kh->pos, s->held[l][h], (size_t)kh->len * sizeof *kh->pos) != 0;
        }
    return bad;
}

static void check_press(const pikv_model *m, const char *spec, int target)
{
    const pikv_config *c = pikv_model_config(m);
    pk_cuda_session *s = calloc(1, sizeof *s);
    reference r = {0};
    pikv_press *pg = pikv_press_new(spec, m, MODEL), *pc = pikv_press_new(spec, m, MODEL);
    int rc = s && pg && pc && c->n_layer <= MAX_LAYERS && c->n_head <= MAX_HEADS && c->head_dim <= 256 ? 0 : -1;
    if (rc == 0) {
        *s = (pk_cuda_session){.n_layer = c->n_layer, .n_head = c->n_head, .head_dim = c->head_dim, .C = c->n_embd};
        rc = pk_kv_init(&r.kv, c->n_layer, c->n_head, c->head_dim, PIKV_KV_F32, PIKV_KV_F32) ||
             pk_keep_set_init(&r.keep, c->n_head);
        r.q = malloc((size_t)PROMPT * c->n_embd * sizeof *r.q);
    }
    pk_cuda_decoding *d = rc == 0 && r.q ? pk_cuda_decoding_new(s, c, 0, pg) : NULL;
    CHECK(d != NULL, "%s: attach: %s", spec, pikv_last_error());
    int32_t ids[PROMPT] = {0};
    pk_cuda_press_stats st = {0};
    size_t want_bytes = 0;
    int calls = 0, differ = 0, cuts = 0;
    const size_t head_bytes = 2 * (size_t)c->head_dim * sizeof(float);
    for (int call = 0; d && call < STEPS + 2; call++) {
        const int n = call == 0 ? PROMPT : call == 1 ? 5 : 1;
        /* Due to cut on this call: then every head's entries (before the cut) cross to the host. */
        const int due = pg->ops->decides_next(pg, 0, n);
        size_t held = 0;
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++) held += (size_t)s->len[l][h] + (size_t)n;
        want_bytes += (size_t)c->n_layer * n * c->n_embd * sizeof(float) + (due ? held * head_bytes : 0);
        cuts += due;
        if (pk_cuda_decoding_forward(d, ids, n, NULL, 0, &st) || reference_call(&r, pc, c, n)) break;
        calls++;
        differ += heads_differ(s, &r) > 0;
    }
    CHECK(calls == STEPS + 2 && differ == 0 && s->bad_keeps == 0,
          "%s: %d of %d calls ran, after %d of them the held positions differ from the reference's, %d bad keeps: %s",
          spec, calls, STEPS + 2, differ, s->bad_keeps, pikv_last_error());
    CHECK(cuts == STEPS / 8 && s->len[0][0] == target + STEPS % 8,
          "%s: %d cuts over %d decoded tokens, head 0 holds %d (want %d)", spec, cuts, STEPS, s->len[0][0],
          target + STEPS % 8);
    CHECK(st.bytes_to_host == want_bytes, "%s: %zu bytes to the host, expected %zu", spec, st.bytes_to_host,
          want_bytes);
    printf("%s: %d calls, %d cuts, every head's positions as the reference's after each call; %.2f MB to the host\n",
           spec, calls, cuts, st.bytes_to_host / 1e6);
    pk_cuda_decoding_free(d);
    pikv_press_free(pg);
    pikv_press_free(pc);
    pk_kv_free(&r.kv);
    pk_keep_set_free(&r.keep);
    free(r.q);
    free(s);
}

/* A sequence a press has cut (a head holding fewer entries than its position) cannot take one. */
static void check_refusal(const pikv_model *m)
{
    const pikv_config *c = pikv_model_config(m);
    pk_cuda_session *s = calloc(1, sizeof *s);
    pikv_press *p = pikv_press_new("decoding(knorm):every=8,target=64", m, MODEL);
    if (!s || !p) return;
    *s = (pk_cuda_session){.n_layer = c->n_layer, .n_head = c->n_head, .head_dim = c->head_dim, .C = c->n_embd};
    int32_t ids[16] = {0};
    pk_cuda_forward_queries(s, 0, ids, 16, NULL, 0);
    s->len[2][3] = 10;
    pk_cuda_decoding *d = pk_cuda_decoding_new(s, c, 0, p);
    CHECK(d == NULL && strstr(pikv_last_error(), "holds every token it has seen; layer 2 head 3 holds 10 of 16"),
          "attach to a cut sequence: %s", pikv_last_error());
    pk_cuda_decoding_free(d);
    pikv_press_free(p);
    free(s);
}

int main(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    CHECK(m != NULL, "%s: %s", MODEL, pikv_last_error());
    if (!m) return check_done("test_decoding_host");
    check_press(m, "decoding(knorm):every=8,target=200", 200);
    check_press(m, "decoding(snapkv):every=8,target=200", 200);
    check_press(m, "decoding(expected_attention):every=8,target=150", 150);
    check_refusal(m);
    pikv_model_free(m);
    return check_done("test_decoding_host");
}
