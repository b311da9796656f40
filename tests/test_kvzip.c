/* kvzip: the reconstruction scores recorded by the engine's hook against
 * weights worked out by hand, the press's budgets (layerwise 1 and 0) and
 * sinks on hand-made scores, and on the bundled model: the copy's windows in
 * one call against each window run alone, chunked reconstruction, the nearly
 * full position window, and composed[duo, kvzip]. */
#include "check.h"
#include "engine/session.h"
#include "press_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "models/pikv-ref-14m"

/* The largest weights the backend's attention records: one layer, one head,
 * head_dim 2; four cached entries at positions 0..3 with keys (a_j, b_j) =
 * (0,2) (1,0) (2,0) (0,1), then three new rows at positions 4..6 whose keys
 * (entries 4..6) are 0, row 0 being the prompt's (not recorded: max_row0 = 1).
 * Scale 1, so a query (x, y) weighs entry j by exp(x a_j + y b_j), a new
 * entry by 1:
 *  row 1, q = (ln 2, 0), sees entries 0..5: 1, 2, 4, 1, 1, 1 over 10
 *  row 2, q = (0, ln 2), sees entries 0..6: 4, 1, 1, 2, 1, 1, 1 over 11
 * largest per entry: 4/11, 2/10, 4/10, 2/11, 1/10, 1/10, 1/11. Row 0,
 * q = (0, 10), would give entry 0 almost all its weight; it must not count. */
static void test_recording(void)
{
    test_layer t;
    if (test_layer_init(&t, 1, 1, 2, 7, 3, 4, 6)) return;
    pk_kv_head *kh = pk_kv_at(&t.kv, 0, 0);
    const float keys[4][2] = {{0, 2}, {1, 0}, {2, 0}, {0, 1}};
    memcpy(kh->k, keys, sizeof keys);
    const float q[3][2] = {{0, 10}, {logf(2), 0}, {0, logf(2)}};
    for (int r = 0; r < 3; r++) memcpy(t.q + r * 6, q[r], sizeof q[r]); /* row r's query in qkv [3, 3C] */
    float max[7] = {0}, *maxes[1] = {max}, att[3 * 2], scores[PK_QUERY_BLOCK * 1024];
    const pk_attention_args a = {.kv = &t.kv, .layer = 0, .T = 3, .pos0 = 4, .qkv = t.q, .att = att, .scale = 1.f,
                                 .scores = scores, .n_positions = 1024, .n_threads = 1, .max_weights = maxes,
                                 .max_row0 = 1};
    pk_backend_cpu.attention(&a);
    const float want[7] = {4.f / 11, 2.f / 10, 4.f / 10, 2.f / 11, 1.f / 10, 1.f / 10, 1.f / 11};
    for (int j = 0; j < 7; j++)
        CHECK(fabsf(max[j] - want[j]) < 1e-6f, "entry %d records %g, by hand %g", j, max[j], want[j]);
    layer_free(&t);
}

/* The kvzip press of spec `text`, tokenizing its prompt with the bundled model's tokenizer. */
static pk_press *kvzip_from(const char *text) { return press_from(text, NULL); }

/* Positions head h of layer `layer` keeps after compressing with the press. */
static int kept(const test_layer *t, int layer, int head, int *out)
{
    const pk_kv_head *kh = pk_kv_head_at(&t->kv, layer, head);
    for (int j = 0; j < kh->len; j++) out[j] = kh->pos[j];
    return kh->len;
}

static void check_kept(test_layer *t, pk_press *p, int layer, int head, const int *want, int n_want)
{
    int got[16];
    int n = kept(t, layer, head, got);
    int same = n == n_want;
    for (int i = 0; same && i < n; i++) same = got[i] == want[i];
    CHECK(same, "%s: layer %d head %d keeps %d entries as worked out (%d)", p->name, layer, head, n, n_want);
}

/* Budgets on hand-made scores: 2 layers x 2 heads x 8 entries, ratio 0.5,
 * sink 1 (position 0 always kept).
 *  layer 0 head 0: 0 .9 .8 .7 .6 .5 .4 .3     head 1: 0 .1 .2 .95 .05 .15 .25 .35
 *  layer 1: .01 everywhere.
 * layerwise=1: layer 0's budget is 4 + 4 = 8: the two sinks, .95 (h1 p3), then
 * .9 .8 .7 .6 .5 (h0 p1..p5): head 0 keeps 0..5, head 1 keeps 0 and 3.
 * layerwise=0: 16 of the model's 32 entries: the 4 sinks, then the 12 highest
 * of layer 0's 14 non-sink scores (all above .01): layer 0 drops .05 and .1
 * (h1 p4, p1) and keeps 14, layer 1 keeps only its sinks. */
static void test_budgets(void)
{
    float s[2][2][8] = {{{0, .9f, .8f, .7f, .6f, .5f, .4f, .3f}, {0, .1f, .2f, .95f, .05f, .15f, .25f, .35f}}};
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 8; j++) s[1][h][j] = .01f;
    const float *heads[2][2] = {{s[0][0], s[0][1]}, {s[1][0], s[1][1]}};
    const float *const *layers[2] = {heads[0], heads[1]};
    for (int layerwise = 1; layerwise >= 0; layerwise--) {
        char spec[64];
        snprintf(spec, sizeof spec, "kvzip:ratio=0.5,sink=1,layerwise=%d", layerwise);
        pk_press *p = kvzip_from(spec);
        test_layer t;
        if (!p || test_layer_init(&t, 2, 2, 2, 8, 0, 8, 4)) {
            pk_press_destroy(p);
            return;
        }
        for (int l = 0; l < 2; l++) {
            t.view.layer = l;
            t.view.recon_scores = layers;
            t.view.recon_len = 8;
            CHECK(pk_compress_layer(p, &t.view, &t.kv, &t.keep) == 0, "%s compresses layer %d: %s", spec, l,
                  pikv_last_error());
        }
        if (layerwise) {
            check_kept(&t, p, 0, 0, (const int[]){0, 1, 2, 3, 4, 5}, 6);
            check_kept(&t, p, 0, 1, (const int[]){0, 3}, 2);
            /* layer 1: all .01, budget 8 over 16: sinks, then the earliest of head 0 */
            check_kept(&t, p, 1, 0, (const int[]){0, 1, 2, 3, 4, 5, 6}, 7);
            check_kept(&t, p, 1, 1, (const int[]){0}, 1);
        } else {
            check_kept(&t, p, 0, 0, (const int[]){0, 1, 2, 3, 4, 5, 6, 7}, 8);
            check_kept(&t, p, 0, 1, (const int[]){0, 2, 3, 5, 6, 7}, 6);
            check_kept(&t, p, 1, 0, (const int[]){0}, 1);
            check_kept(&t, p, 1, 1, (const int[]){0}, 1);
        }
        layer_free(&t);
        pk_press_destroy(p);
    }
    /* Without the engine's scores the press refuses instead of guessing. */
    pk_press *p = kvzip_from("kvzip:0.5");
    test_layer t;
    if (p && test_layer_init(&t, 1, 1, 2, 8, 0, 8, 2) == 0) {
        CHECK(pk_compress_layer(p, &t.view, &t.kv, &t.keep) != 0 && strstr(pikv_last_error(), "reconstruction"),
              "kvzip without scores fails: %s", pikv_last_error());
        layer_free(&t);
    }
    pk_press_destroy(p);
}

/* Deterministic token ids standing in for a context. */
static void context_ids(int32_t *ids, int n)
{
    uint32_t x = 12345;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = (int32_t)((x >> 8) % 8000u) + 100;
    }
}

/* Prefill n context ids with the press spec; fills positions kept per
 * (layer, head) into pos[(l * H + h) * n ...] and their counts. Returns the
 * prefill's status. */
static int run_press(const pikv_model *m, const char *spec, const int32_t *ids, int n, int32_t *pos, int *len)
{
    pikv_press *p = pikv_press_new(spec, m, MODEL);
    CHECK(p != NULL, "press '%s' builds: %s", spec, pikv_last_error());
    if (!p) return -1;
    pikv_session *s = pikv_session_new(m, 2);
    const pikv_config *c = pikv_model_config(m);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    int rc = pikv_prefill(s, ids, n, p, logits);
    for (int i = 0; rc == 0 && pos && i < c->n_layer * c->n_head; i++)
        len[i] = pikv_session_kv_positions(s, i / c->n_head, i % c->n_head, pos + (size_t)i * (size_t)n, n);
    free(logits);
    pikv_session_free(s);
    pikv_press_free(p);
    return rc;
}

/* Same kept positions for two runs. */
static int same_kept(int heads, int n, const int32_t *pa, const int *la, const int32_t *pb, const int *lb)
{
    for (int i = 0; i < heads; i++) {
        if (la[i] != lb[i]) return 0;
        for (int j = 0; j < la[i]; j++)
            if (pa[(size_t)i * n + j] != pb[(size_t)i * n + j]) return 0;
    }
    return 1;
}

/* A session holding the first n ids, recording reconstruction scores into
 * rec (scores[layer][head][n], slot_max[head][n_positions]). */
static pikv_session *recording_session(const pikv_model *m, const int32_t *ids, int n, pk_recon_record *rec)
{
    const pikv_config *c = pikv_model_config(m);
    pikv_session *s = pikv_session_new(m, 2);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    CHECK(s && logits && pikv_prefill(s, ids, n, NULL, logits) == 0, "context prefills: %s", pikv_last_error());
    free(logits);
    rec->len = n;
    rec->first_row = 0;
    rec->scores = calloc((size_t)c->n_layer, sizeof *rec->scores);
    rec->slot_max = calloc((size_t)c->n_head, sizeof *rec->slot_max);
    for (int h = 0; h < c->n_head; h++) rec->slot_max[h] = calloc((size_t)c->n_positions, sizeof(float));
    for (int l = 0; l < c->n_layer; l++) {
        rec->scores[l] = calloc((size_t)c->n_head, sizeof **rec->scores);
        for (int h = 0; h < c->n_head; h++) rec->scores[l][h] = calloc((size_t)n, sizeof(float));
    }
    if (s) s->presses.recording = rec;
    return s;
}

static void free_record(const pikv_config *c, pk_recon_record *rec)
{
    for (int l = 0; l < c->n_layer; l++) {
        for (int h = 0; h < c->n_head; h++) free(rec->scores[l][h]);
        free(rec->scores[l]);
    }
    for (int h = 0; h < c->n_head; h++) free(rec->slot_max[h]);
    free(rec->scores);
    free(rec->slot_max);
}

/* The copy's windows in one forward call (pk_forward_windows) record what
 * running each window on its own does -- appended to the cache after the
 * context, then rewound -- and leave the cache as it was: 300 context tokens,
 * then the same 300 as windows of 50, in one call and in calls of 150 and of
 * 100 + 200 rows. */
static void test_windows(const pikv_model *m)
{
    const pikv_config *c = pikv_model_config(m);
    enum { N = 300, W = 50 };
    int32_t ids[N];
    context_ids(ids, N);
    pk_recon_record want, got;
    pikv_session *ref = recording_session(m, ids, N, &want);
    for (int w0 = 0; ref && w0 < N; w0 += W) {
        pk_kv_snapshot snap = {0};
        CHECK(pk_kv_snapshot_take(&ref->fwd.kv, &snap) == 0 && pikv_forward(ref, ids + w0, W, NULL, 0) == 0 &&
                  pk_kv_snapshot_restore(&ref->fwd.kv, &snap) == 0,
              "window at %d runs on its own: %s", w0, pikv_last_error());
        ref->fwd.pos = N;
        pk_kv_snapshot_free(&snap);
    }
    const int splits[3][2] = {{N, 0}, {150, 150}, {100, 200}};
    for (int k = 0; k < 3; k++) {
        pikv_session *s = recording_session(m, ids, N, &got);
        int rc = s ? 0 : -1;
        for (int done = 0, i = 0; rc == 0 && i < 2 && splits[k][i]; done += splits[k][i++])
            rc = pk_forward_windows(s, ids + done, splits[k][i], W);
        CHECK(rc == 0, "windows in calls of %d + %d rows run: %s", splits[k][0], splits[k][1], pikv_last_error());
        double worst = 0;
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++)
                for (int j = 0; j < N; j++) {
                    double d = fabs((double)got.scores[l][h][j] - want.scores[l][h][j]);
                    if (d > worst) worst = d;
                }
        CHECK(worst < 1e-5, "calls of %d + %d rows: largest weights within %g of each window alone", splits[k][0],
              splits[k][1], worst);
        CHECK(s && s->fwd.pos == N && pk_kv_head_at(&s->fwd.kv, 0, 0)->len == N,
              "the windows leave the cache and position at the context's %d", N);
        free_record(c, &got);
        pikv_session_free(s);
    }
    free_record(c, &want);
    pikv_session_free(ref);
}

static void test_model(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    CHECK(m != NULL, "bundled model loads: %s", pikv_last_error());
    if (!m) return;
    const pikv_config *c = pikv_model_config(m);
    test_windows(m);
    const int H = c->n_layer * c->n_head, n = 300;
    int32_t ids[2048];
    context_ids(ids, 2048);
    int32_t *pa = calloc((size_t)H * 2048, sizeof *pa), *pb = calloc((size_t)H * 2048, sizeof *pb);
    int *la = calloc((size_t)H, sizeof *la), *lb = calloc((size_t)H, sizeof *lb);

    /* One chunk that holds the whole context, however large chunk= is. */
    if (run_press(m, "kvzip:ratio=0.5,chunk=300", ids, n, pa, la) == 0 &&
        run_press(m, "kvzip:ratio=0.5,chunk=100000", ids, n, pb, lb) == 0)
        CHECK(same_kept(H, n, pa, la, pb, lb), "chunk=300 and chunk=100000 keep the same positions");
    /* Budget (layerwise=0): the model keeps floor(36 heads * 300 * 0.5) =
     * 5400 entries, spread over its layers by score. */
    int kept = 0;
    for (int i = 0; i < H; i++) kept += la[i];
    CHECK(kept == H * 150, "the model keeps %d entries, its budget %d", kept, H * 150);
    for (int l = 0; l < c->n_layer; l++) {
        for (int h = 0; h < c->n_head; h++) {
            int sinks = 0;
            for (int j = 0; j < la[l * c->n_head + h]; j++) sinks += pa[(size_t)(l * c->n_head + h) * n + j] < 4;
            CHECK(sinks == 4, "layer %d head %d keeps its 4 sinks (%d)", l, h, sinks);
        }
    }
    /* The nearly full window: the prompt plus one token must fit after the context. */
    pikv_press *probe = pikv_press_new("kvzip:0.5", m, MODEL);
    const int np = probe ? probe->n_recon_prompt : 0;
    pikv_press_free(probe);
    int full = c->n_positions - np;
    CHECK(run_press(m, "kvzip:0.5", ids, full, NULL, NULL) != 0 && strstr(pikv_last_error(), "n_positions"),
          "a context of %d tokens leaves no room: %s", full, pikv_last_error());
    int fits = c->n_positions - np - 32;
    int *lf = calloc((size_t)H, sizeof *lf);
    int32_t *pf = calloc((size_t)H * (size_t)fits, sizeof *pf);
    CHECK(run_press(m, "kvzip:ratio=0.5,chunk=256", ids, fits, pf, lf) == 0,
          "a context of %d tokens reconstructs in chunks capped to 32: %s", fits, pikv_last_error());
    int total = 0;
    for (int i = 0; i < H; i++) total += lf[i];
    CHECK(total == H * fits / 2, "near-full: the model keeps %d, budget %d", total, H * fits / 2);
    free(lf);
    free(pf);

    /* composed[duo, kvzip] (duo with a window of 4 + 64, shorter than the
     * context): duo's streaming heads keep their window; with layerwise=1
     * the full heads share floor(300 * 0.5) per head of kvzip's budget, with
     * layerwise=0 each full head keeps exactly what kvzip alone keeps in it
     * (its entries among the model's highest scores). */
    int *ld = calloc((size_t)H, sizeof *ld);
    int32_t *pd = calloc((size_t)H * (size_t)n, sizeof *pd);
    if (run_press(m, "duo:ratio=0.5,recent=64", ids, n, pd, ld) == 0 &&
        run_press(m, "composed[duo:ratio=0.5,recent=64,kvzip:ratio=0.5,layerwise=1]", ids, n, pa, la) == 0) {
        for (int l = 0; l < c->n_layer; l++) {
            int full_heads = 0, full_kept = 0, stream_same = 1;
            for (int h = 0; h < c->n_head; h++) {
                int i = l * c->n_head + h;
                if (ld[i] == n) {
                    full_heads++;
                    full_kept += la[i];
                } else {
                    stream_same &= la[i] == ld[i];
                }
            }
            CHECK(stream_same, "layer %d: duo's streaming heads keep their window under kvzip", l);
            CHECK(full_kept == full_heads * 150, "layer %d: %d full heads keep %d, kvzip's budget %d", l,
                  full_heads, full_kept, full_heads * 150);
        }
    }
    if (run_press(m, "kvzip:ratio=0.5,layerwise=0", ids, n, pb, lb) == 0 &&
        run_press(m, "composed[duo:ratio=0.5,recent=64,kvzip:ratio=0.5]", ids, n, pa, la) == 0) {
        int full_same = 1, stream_same = 1, full_heads = 0;
        for (int i = 0; i < H; i++) {
            if (ld[i] != n) {
                stream_same &= same_kept(1, n, pa + (size_t)i * n, la + i, pd + (size_t)i * n, ld + i);
                continue;
            }
            full_heads++;
            full_same &= same_kept(1, n, pa + (size_t)i * n, la + i, pb + (size_t)i * n, lb + i);
        }
        CHECK(full_heads > 0 && full_heads < H, "duo leaves %d of %d heads full", full_heads, H);
        CHECK(stream_same, "layerwise=0: duo's streaming heads keep their window under kvzip");
        CHECK(full_same, "layerwise=0: each full head keeps what kvzip alone keeps in it");
    }
    free(ld);
    free(pd);
    free(pa);
    free(pb);
    free(la);
    free(lb);
    pikv_model_free(m);
}

/* prompt_file=PATH: the file's text is the reconstruction prompt (its token
 * count is the press's); a missing or empty file is refused naming it. */
static void test_prompt_file(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    CHECK(m && tok, "bundled model: %s", pikv_last_error());
    if (!m || !tok) return;
    char dir[] = "/tmp/pikv-kvzip-XXXXXX", path[64], empty[64], spec[160];
    CHECK(mkdtemp(dir) != NULL, "temporary directory");
    snprintf(path, sizeof path, "%s/prompt.txt", dir);
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    const char text[] = "\n\nNow say it all again, exactly as written above:\n";
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
    f = fopen(empty, "w");
    if (f) fclose(f);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    CHECK(pikv_tokenize(tok, text, strlen(text), &ids, &n_ids) == 0, "tokenize the prompt");
    snprintf(spec, sizeof spec, "kvzip:ratio=0.5,prompt_file=%s", path);
    pikv_press *p = pikv_press_new(spec, m, MODEL);
    CHECK(p && p->n_recon_prompt == (int)n_ids, "prompt_file: %d prompt tokens, the file's text has %zu",
          p ? p->n_recon_prompt : -1, n_ids);
    for (int i = 0; p && i < p->n_recon_prompt && i < (int)n_ids; i++)
        CHECK(p->recon_prompt[i] == ids[i], "prompt token %d", i);
    pikv_press_free(p);
    snprintf(spec, sizeof spec, "kvzip:ratio=0.5,prompt_file=%s/missing.txt", dir);
    CHECK(pikv_press_new(spec, m, MODEL) == NULL && strstr(pikv_last_error(), "missing.txt"),
          "a missing prompt_file is named: %s", pikv_last_error());
    snprintf(spec, sizeof spec, "kvzip:ratio=0.5,prompt_file=%s", empty);
    CHECK(pikv_press_new(spec, m, MODEL) == NULL && strstr(pikv_last_error(), "is empty"),
          "an empty prompt_file is refused: %s", pikv_last_error());
    pikv_free(ids);
    remove(path);
    remove(empty);
    rmdir(dir);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
}

int main(void)
{
    test_recording();
    test_budgets();
    test_model();
    test_prompt_file();
    return check_done("test_kvzip");
}
