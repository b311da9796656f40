/* Presses on the CUDA engine against the same presses on the CPU engine (make
 * test-cuda, on a GPU machine), float32 weights and cache on both, bundled
 * model.
 *
 * For each press: after a 300-token prompt every head keeps the same entries
 * on the device as on the CPU (same count, and each kept key equal to the
 * CPU's kept key in the same slot within 1e-5 relative, so a different choice
 * fails), the blocks a head holds are exactly what its entries need, and 8
 * tokens decoded over the compressed cache give logits within 1e-4 relative
 * L2 of the CPU's. Three moe_router routers whose choice moves under float32
 * noise on this prompt are instead held to the decision the press makes on
 * the device's own values, computed here without the engine's glue. DuoAttention's rings: after 500 decoded tokens each
 * streaming head holds sink + recent entries in ceil((sink + recent) / 16)
 * blocks and the logits still equal the CPU's ring decode. DuoAttention with
 * prefill_chunk: the streaming heads are rings from the first chunk, each
 * chunk's rows see only their window, and the kept entries and decoded
 * logits equal the CPU's chunked prefill (chunks on the matrix-vector path
 * and on cuBLAS's, and a ring rolled 500 times after). Capacity: the plan
 * admits floor(budget / bytes per sequence), and a pool of that many
 * sequences' bytes (plus one prompt's headroom) runs them and refuses one
 * more. kvzip, alone and composed, is decided by the CPU engine and kept on
 * the GPU: the same entries, nothing copied. decoding(...), which cuts the
 * cache while decoding, keeps the CPU's entries through five cuts and its
 * logits stay within 1e-4. Presses the GPU cannot run are refused in one
 * line. Without a GPU it prints "skipped". */
#include "backend/cuda/engine.h"
#include "engine/compress.h"
#include "engine/cuda/capacity_cuda.h"
#include "engine/cuda/decoding_cuda.h"
#include "engine/cuda/routing_cuda.h"
#include "engine/session.h"
#include "../check.h"
#include "tokens.h"
#include "pikv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_PROMPT = 300, N_DECODE = 8, N_RING_DECODE = 500, BLOCK = 16 };

static const char *const MODEL = "models/pikv-ref-14m";

static pk_cuda_session *open_session(const pikv_model *m, int max_seq, long pool_blocks)
{
    pk_cuda_params p = {.dtype = PK_CUDA_F32, .max_seq = max_seq, .pool_blocks = pool_blocks, .use_graphs = 1};
    pk_cuda_session *s = pk_cuda_session_new(m, &p);
    if (!s) fprintf(stderr, "CUDA session: %s\n", pikv_last_error());
    return s;
}

/* The press's decision on the device's own values, made here without the
 * engine's glue: a plain GPU prefill of the prompt, every layer's keys,
 * values and queries read back into a float32 host cache, and the press run
 * over it layer by layer. ref is initialised here; the caller frees it. */
static int decide_on_device_values(const pikv_model *m, const char *spec, const int32_t *prompt, int n, pk_kvcache *ref)
{
    const pikv_config *cf = pikv_model_config(m);
    pikv_press *p = pikv_press_new(spec, m, MODEL);
    pk_cuda_session *g = open_session(m, 1, 0);
    float *q = malloc((size_t)cf->n_layer * n * cf->n_embd * sizeof *q);
    float *k = malloc((size_t)cf->n_head * n * cf->head_dim * sizeof *k);
    float *v = malloc((size_t)cf->n_head * n * cf->head_dim * sizeof *v);
    pk_keep_set keep;
    int rc = pk_kv_init(ref, cf->n_layer, cf->n_head, cf->head_dim, PIKV_KV_F32, PIKV_KV_F32);
    if (rc == 0) rc = p && g && pk_keep_set_init(&keep, cf->n_head) == 0 ? 0 : -1;
    if (rc == 0) rc = pk_kv_reserve(ref, n, 1) || pk_cuda_forward_queries(g, 0, prompt, n, NULL, 0);
    const size_t rows = (size_t)n * cf->head_dim;
    for (int l = 0; rc == 0 && l < cf->n_layer; l++) {
        rc = pk_cuda_read_heads(g, 0, l, 0, cf->n_head, n, k, v) ||
             pk_cuda_read_queries(g, l, q + (size_t)l * n * cf->n_embd);
        for (int h = 0; rc == 0 && h < cf->n_head; h++) {
            pk_kv_head *kh = pk_kv_at(ref, l, h);
            memcpy(kh->k, k + h * rows, rows * sizeof *k);
            memcpy(kh->v, v + h * rows, rows * sizeof *v);
            for (int j = 0; j < n; j++) kh->pos[j] = j;
            kh->len = n;
        }
        const pk_press_view view = {.cfg = cf, .layer = l, .q = q + (size_t)l * n * cf->n_embd, .q_stride = cf->n_embd,
                                    .n_q = n, .kv = ref, .backend = &pk_backend_cpu,
                                    .scale = pk_attention_scale(cf, l)};
        if (rc == 0) rc = pk_compress_layer(p, &view, ref, &keep);
    }
    if (p && g) pk_keep_set_free(&keep);
    pikv_press_free(p);
    pk_cuda_session_free(g);
    free(q);
    free(k);
    free(v);
    return rc;
}

/* Every head of the device's cache against a host cache (the CPU engine's,
 * or the press's decision on the device's values): same length, the blocks
 * that length needs, and the same kept keys slot by slot. Returns the number
 * of heads that differ; *worst gets the largest key difference. */
static int compare_heads(pk_cuda_session *g, const pk_kvcache *host, const pikv_config *cf, double *worst)
{
    int bad = 0;
    *worst = 0;
    float *k = malloc((size_t)cf->n_positions * cf->head_dim * sizeof *k);
    float *v = malloc((size_t)cf->n_positions * cf->head_dim * sizeof *v);
    for (int l = 0; l < cf->n_layer; l++)
        for (int h = 0; h < cf->n_head; h++) {
            const pk_kv_head *kh = pk_kv_head_at(host, l, h);
            int blocks = -1;
            const int len = pk_cuda_head_length(g, 0, l, h, &blocks);
            if (len != kh->len || blocks != (len + BLOCK - 1) / BLOCK ||
                pk_cuda_read_heads(g, 0, l, h, 1, len, k, v)) {
                if (bad++ < 3)
                    fprintf(stderr, "layer %d head %d: %d entries in %d blocks on the GPU, %d on the CPU\n", l, h, len,
                            blocks, kh->len);
                continue;
            }
            const float *ck = pk_kv_f32_rows(kh, 0);
            double d = len ? rel_l2(k, ck, (size_t)len * cf->head_dim) : 0;
            if (d > *worst) *worst = d;
            if (d > 1e-5) bad++;
        }
    free(k);
    free(v);
    return bad;
}

/* Prefill the prompt with the press (one instance per engine, since some keep
 * per-run state), compare the kept entries, then decode the same tokens on
 * both and compare the logits after each. A press whose choice is not stable
 * under float32 noise (near_tie) is held to the decision it makes on the
 * device's own values instead, and its heads that differ from the CPU
 * engine's are counted, not failed. */
static void check_press(const pikv_model *m, const char *spec, int n_decode, int near_tie)
{
    const pikv_config *cf = pikv_model_config(m);
    const int V = cf->vocab_size;
    int32_t prompt[N_PROMPT], *tokens = malloc((size_t)n_decode * sizeof *tokens);
    fill_tokens(prompt, N_PROMPT, V, 11);
    fill_tokens(tokens, n_decode, V, 12);
    pikv_press *pc = pikv_press_new(spec, m, MODEL), *pg = pikv_press_new(spec, m, MODEL);
    pikv_session *c = pikv_session_new(m, 0);
    pk_cuda_session *g = open_session(m, 1, 0);
    float *lc = malloc((size_t)V * sizeof *lc), *lg = malloc((size_t)V * sizeof *lg);
    pk_cuda_press_stats st;
    int rc = pc && pg && c && g ? 0 : -1;
    if (rc == 0) rc = pikv_prefill(c, prompt, N_PROMPT, pc, NULL);
    if (rc == 0) rc = pk_cuda_prefill_press(g, m, 0, prompt, N_PROMPT, pg, NULL, &st);
    CHECK(rc == 0, "%s: prefill: %s", spec, pikv_last_error());
    /* What the press needed from the device: nothing for a decision from
     * positions, a float an entry for knorm (its key norms), a double an
     * entry for snapkv and tova (the window's attention sums; tova asks for
     * every head's), two for expected_attention (logits and value norms);
     * for moe_router (4 experts, sink 4, window 64) per head the window's
     * attention sums and the key norms of every entry, the window's 64
     * queries, the centroids and a cluster an entry from the k-means of the
     * 232 routable keys, and their cosines to the 4 centroids -- not the keys;
     * keys, values and queries for keydiff, scored on the host. */
    const size_t per_layer = (size_t)cf->n_head * N_PROMPT * sizeof(float);
    size_t want_bytes = (size_t)-1;
    if (strncmp(spec, "duo:", 4) == 0 || strcmp(spec, "none") == 0 || strcmp(spec, "streaming_llm:0.5") == 0)
        want_bytes = 0;
    else if (strcmp(spec, "knorm:0.5") == 0)
        want_bytes = cf->n_layer * per_layer;
    else if (strcmp(spec, "snapkv:0.5") == 0 || strcmp(spec, "tova:0.5") == 0)
        want_bytes = cf->n_layer * 2 * per_layer;
    else if (strcmp(spec, "expected_attention:0.5") == 0)
        want_bytes = cf->n_layer * 4 * per_layer;
    else if (strcmp(spec, "moe_router:0.5") == 0) {
        const size_t routable = N_PROMPT - 4 - 64, hd = (size_t)cf->head_dim;
        want_bytes = (size_t)cf->n_layer * cf->n_head *
                     (N_PROMPT * (sizeof(double) + sizeof(float)) + 64 * hd * sizeof(float) +
                      (4 * hd + routable) * sizeof(float) + routable * 4 * sizeof(float));
    } else if (strcmp(spec, "keydiff:0.5") == 0)
        want_bytes = cf->n_layer * (2 * per_layer * cf->head_dim + (size_t)N_PROMPT * cf->n_embd * sizeof(float));
    CHECK(rc != 0 || want_bytes == (size_t)-1 || st.bytes_to_host == want_bytes,
          "%s: %zu bytes copied from the GPU, expected %zu (%s)", spec, st.bytes_to_host, want_bytes,
          pk_cuda_press_how(st.mode));
    /* Which presses the device measures for: every one declared measured and
     * not entry-free (moe_router's measures include its clustering and its
     * window queries); the rest are decided from positions or from a copy. */
    static const char *const measured[] = {"knorm:0.5", "snapkv:0.5", "expected_attention:0.5", "tova:0.5",
                                           "observed_attention:0.5", "adakv(snapkv):0.5", "pyramidkv:0.5",
                                           "chunkkv(knorm):0.5", "composed[knorm:0.3,duo:0.5]", "eplb_duo"};
    int want_measured = strncmp(spec, "moe_router:", 11) == 0; /* every router */
    for (size_t i = 0; i < sizeof measured / sizeof *measured; i++) want_measured |= strcmp(spec, measured[i]) == 0;
    CHECK(rc != 0 || want_measured == (st.mode == PK_CUDA_SCORED_ON_DEVICE),
          "%s: %s", spec, pk_cuda_press_how(st.mode));
    CHECK(rc != 0 || (strstr(spec, "kvzip") != NULL) == (st.mode == PK_CUDA_DECIDED_BY_CPU_ENGINE),
          "%s: %s", spec, pk_cuda_press_how(st.mode));
    CHECK(rc != 0 ||
              (st.mode == PK_CUDA_FROM_POSITIONS || st.mode == PK_CUDA_DECIDED_BY_CPU_ENGINE) == (st.bytes_to_host == 0),
          "%s: %s, yet %zu bytes copied", spec, pk_cuda_press_how(st.mode), st.bytes_to_host);
    if (rc == 0) printf("%-36s %s: %.2f MB copied from the GPU\n", spec, pk_cuda_press_how(st.mode), st.bytes_to_host / 1e6);
    double key_diff = 0;
    const int bad = rc == 0 ? compare_heads(g, &c->fwd.kv, cf, &key_diff) : -1;
    if (near_tie) {
        pk_kvcache ref;
        double own_diff = 1;
        const int own_bad = decide_on_device_values(m, spec, prompt, N_PROMPT, &ref) == 0
                                ? compare_heads(g, &ref, cf, &own_diff)
                                : -1;
        pk_kv_free(&ref);
        CHECK(own_bad == 0, "%s: %d heads differ from the press's decision on the device's values (key diff %.2e)",
              spec, own_bad, own_diff);
        printf("%-36s keeps what the press decides on the GPU's values (key diff %.1e); %d of %d heads differ "
               "from the CPU engine's choice (a near tie)\n",
               spec, own_diff, bad, cf->n_layer * cf->n_head);
        goto done;
    }
    CHECK(bad == 0, "%s: %d heads keep other entries on the GPU (largest key difference %.2e)", spec, bad, key_diff);
    double worst = 0;
    for (int i = 0; rc == 0 && i < n_decode; i++) {
        rc = pikv_forward(c, &tokens[i], 1, lc, 0);
        if (rc == 0) rc = pk_cuda_decode(g, &tokens[i], 1, lg);
        const double d = rc == 0 ? rel_l2(lg, lc, (size_t)V) : 1;
        if (d > worst) worst = d;
    }
    CHECK(rc == 0 && worst < 1e-4, "%s: decode over the compressed cache: rel L2 %.3e (limit 1e-4): %s", spec, worst,
          rc ? pikv_last_error() : "");
    printf("%-36s KV %7.2f -> %7.2f MB on the GPU, same kept entries (key diff %.1e), %d decoded: logits rel L2 "
           "%.1e\n",
           spec, st.kv_bytes_before / 1e6, st.kv_bytes_after / 1e6, key_diff, n_decode, worst);
    if (rc == 0 && n_decode == N_RING_DECODE) {
        /* The streaming heads after the ring has rolled past its window. */
        int streaming = 0, exact = 0;
        for (int l = 0; l < cf->n_layer; l++)
            for (int h = 0; h < cf->n_head; h++) {
                const pk_kv_head *kh = pk_kv_head_at(&c->fwd.kv, l, h);
                if (!kh->recent) continue;
                int blocks = -1;
                const int len = pk_cuda_head_length(g, 0, l, h, &blocks);
                streaming++;
                exact += len == kh->sink + kh->recent && blocks == (kh->sink + kh->recent + BLOCK - 1) / BLOCK;
            }
        CHECK(streaming > 0 && exact == streaming, "%s: %d of %d streaming heads hold exactly their ring's blocks",
              spec, exact, streaming);
        printf("%-36s after %d decoded tokens: %d of %d streaming heads hold exactly ceil((sink + recent) / 16) "
               "blocks\n",
               spec, n_decode, exact, streaming);
    }
done:
    pikv_press_free(pc);
    pikv_press_free(pg);
    pikv_session_free(c);
    pk_cuda_session_free(g);
    free(lc);
    free(lg);
    free(tokens);
}

/* A press that acts while decoding, attached to the prompt on both engines:
 * the same tokens decoded on both, the logits compared after each, and at
 * the end every head keeps the CPU's entries in the blocks they need. With
 * every=8 and 44 tokens the press cuts 5 times, so each head holds its
 * target plus the 4 tokens since the last cut. */
static void check_decoding(const pikv_model *m, const char *spec, int target)
{
    enum { STEPS = 44, EVERY = 8 };
    const pikv_config *cf = pikv_model_config(m);
    const int V = cf->vocab_size;
    int32_t prompt[N_PROMPT], tokens[STEPS];
    fill_tokens(prompt, N_PROMPT, V, 13);
    fill_tokens(tokens, STEPS, V, 14);
    pikv_press *pc = pikv_press_new(spec, m, MODEL), *pg = pikv_press_new(spec, m, MODEL);
    pikv_session *c = pikv_session_new(m, 0);
    pk_cuda_session *g = open_session(m, 1, 0);
    pk_cuda_decoding *d = g && pg ? pk_cuda_decoding_new(g, cf, 0, pg) : NULL;
    float *lc = malloc((size_t)V * sizeof *lc), *lg = malloc((size_t)V * sizeof *lg);
    pk_cuda_press_stats st = {0};
    int rc = pc && c && d ? 0 : -1;
    if (rc == 0) rc = pikv_prefill(c, prompt, N_PROMPT, pc, lc);
    if (rc == 0) rc = pk_cuda_decoding_forward(d, prompt, N_PROMPT, lg, 0, &st);
    double worst = rc == 0 ? rel_l2(lg, lc, (size_t)V) : 1;
    for (int i = 0; rc == 0 && i < STEPS; i++) {
        rc = pikv_forward(c, &tokens[i], 1, lc, 0);
        if (rc == 0) rc = pk_cuda_decoding_forward(d, &tokens[i], 1, lg, 0, &st);
        const double e = rc == 0 ? rel_l2(lg, lc, (size_t)V) : 1;
        if (e > worst) worst = e;
    }
    CHECK(rc == 0 && worst < 1e-4, "%s: %d decoded tokens: logits rel L2 %.3e (limit 1e-4): %s", spec, STEPS, worst,
          rc ? pikv_last_error() : "");
    double key_diff = 1;
    const int bad = rc == 0 ? compare_heads(g, &c->fwd.kv, cf, &key_diff) : -1;
    const int want = target + STEPS % EVERY;
    int exact = 0;
    for (int l = 0; l < cf->n_layer; l++)
        for (int h = 0; h < cf->n_head; h++) exact += pk_cuda_head_length(g, 0, l, h, NULL) == want;
    CHECK(bad == 0 && exact == cf->n_layer * cf->n_head,
          "%s: %d heads keep other entries than the CPU's (key diff %.2e); %d hold %d entries", spec, bad, key_diff,
          exact, want);
    /* Per call every layer's query rows; per cut every head's keys and values. */
    const size_t q_bytes = (size_t)(N_PROMPT + STEPS) * cf->n_layer * cf->n_embd * sizeof(float);
    CHECK(rc != 0 || st.bytes_to_host > q_bytes, "%s: %zu bytes to the host, at least %zu of queries", spec,
          st.bytes_to_host, q_bytes);
    if (rc == 0)
        printf("%-36s %d decoded after %d: logits rel L2 %.1e, every head %d entries as on the CPU (key diff %.1e), "
               "%.2f MB to the host\n",
               spec, STEPS, N_PROMPT, worst, want, key_diff, st.bytes_to_host / 1e6);
    pk_cuda_decoding_free(d);
    pikv_press_free(pc);
    pikv_press_free(pg);
    pikv_session_free(c);
    pk_cuda_session_free(g);
    free(lc);
    free(lg);
}

/* The capacity plan at budgets just below and at k sequences' bytes admits
 * k - 1 and k; a pool of k sequences' bytes plus the plan's headroom then
 * prefills and decodes k of them, holding exactly k sequences' bytes, and
 * refuses a (k+1)-th. */
static void check_capacity(const pikv_model *m, const char *spec, int n_prompt, int k)
{
    const pikv_config *cf = pikv_model_config(m);
    const int V = cf->vocab_size, n_gen = 20;
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt), next[8];
    fill_tokens(prompt, n_prompt, V, 21);
    pikv_press *p = pikv_press_new(spec, m, MODEL);
    pk_cuda_session *probe = open_session(m, 1, 0);
    pk_cuda_capacity below, at;
    int rc = p && probe ? 0 : -1;
    if (rc == 0) rc = pk_cuda_plan_capacity(probe, m, prompt, n_prompt, p, n_gen, 0, &at);
    const size_t per = at.per_seq_bytes;
    if (rc == 0) rc = pk_cuda_plan_capacity(probe, m, prompt, n_prompt, p, n_gen, k * per - 1, &below);
    if (rc == 0) rc = pk_cuda_plan_capacity(probe, m, prompt, n_prompt, p, n_gen, k * per, &at);
    pk_cuda_session_free(probe);
    CHECK(rc == 0 && per > 0 && below.admitted == k - 1 && at.admitted == k,
          "%s: budgets of %d sequences' bytes less one and exactly: admitted %d and %d: %s", spec, k, below.admitted,
          at.admitted, rc ? pikv_last_error() : "");
    pk_cuda_session *g =
        rc == 0 ? open_session(m, k + 1, (long)((at.budget_bytes + at.headroom_bytes) / at.block_bytes)) : NULL;
    int admitted = 0;
    for (int b = 0; g && b < k; b++) {
        if (pk_cuda_prefill_press(g, m, b, prompt, n_prompt, p, NULL, NULL)) break;
        admitted++;
    }
    for (int i = 0; g && admitted == k && i < n_gen && rc == 0; i++) {
        fill_tokens(next, k, V, 30 + (uint64_t)i);
        rc = pk_cuda_decode(g, next, k, NULL);
    }
    pk_cuda_stats st = {0};
    if (g) pk_cuda_get_stats(g, &st);
    const int refused = g && pk_cuda_prefill_press(g, m, k, prompt, n_prompt, p, NULL, NULL) == -1 &&
                        strstr(pikv_last_error(), "pool full") != NULL;
    CHECK(g && admitted == k && rc == 0 && st.kv_bytes_in_use == k * per && refused,
          "%s: %d of %d sequences ran (decode rc %d), %zu bytes in use of %zu, next refused: %d", spec, admitted, k,
          rc, st.kv_bytes_in_use, (size_t)k * per, refused);
    printf("%-36s %d-token prompts: %.2f MB per sequence (headroom %.2f MB); %d fit k x bytes, ran, held %.2f MB; "
           "the next refused\n",
           spec, n_prompt, per / 1e6, at.headroom_bytes / 1e6, admitted, st.kv_bytes_in_use / 1e6);
    pk_cuda_session_free(g);
    pikv_press_free(p);
    free(prompt);
}

/* Presses that keep one sequence's state between calls run on one sequence
 * only: one that acts while decoding is refused by the prefill a batch, a
 * capacity run and a GPU group use; one that routes queries is compressed by
 * that prefill like any moe_router. Both are refused, naming the press, by a
 * batch of more than one sequence and by a capacity run. */
static void check_refusals(const pikv_model *m)
{
    static const char *const specs[] = {"decoding(knorm):every=16,target=64", "moe_router:ratio=0.5,route=1"};
    static const char *const what[] = {"acts while decoding", "routes later queries through its table (route=1)"};
    int32_t prompt[32];
    fill_tokens(prompt, 32, pikv_model_config(m)->vocab_size, 5);
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        pikv_press *p = pikv_press_new(specs[i], m, MODEL);
        pk_cuda_session *g = open_session(m, 2, 0);
        const int rc = p && g ? pk_cuda_prefill_press(g, m, 0, prompt, 32, p, NULL, NULL) : -1;
        if (i == 0)
            CHECK(rc == -1 && strstr(pikv_last_error(), "acts while decoding: on the GPU it runs on one sequence") &&
                      pk_cuda_position(g, 0) == 0,
                  "%s: prefill rc %d, %s", specs[i], rc, pikv_last_error());
        else
            CHECK(rc == 0 && pk_cuda_position(g, 0) == 32 && pk_cuda_head_length(g, 0, 0, 0, NULL) < 32,
                  "%s: the prefill compresses it (rc %d, %s)", specs[i], rc, rc ? pikv_last_error() : "");
        if (i == 1 && rc == 0) {
            /* Routed calls run alone, and not after the sequence is cut. */
            pk_cuda_routing *r = pk_cuda_routing_new(g, pikv_model_config(m), 0, p);
            int32_t next = prompt[0], two[2] = {prompt[0], prompt[1]}, chosen[2];
            CHECK(r && pk_cuda_forward(g, 0, &next, 1, NULL, 0) == 0, "%s: a routed step: %s", specs[i],
                  pikv_last_error());
            CHECK(pk_cuda_decode_greedy_steps(g, two, 2, 1, chosen) == -1 &&
                      strstr(pikv_last_error(), "sequence 0 routes its queries on the host layer by layer"),
                  "%s: greedy steps of a routed sequence: %s", specs[i], pikv_last_error());
            CHECK(pk_cuda_truncate(g, 0, 0) == 0 && pk_cuda_forward(g, 0, &next, 1, NULL, 0) == -1 &&
                      strstr(pikv_last_error(), "was cut or compressed since its query-time routing began"),
                  "%s: a call after a cut: %s", specs[i], pikv_last_error());
            pk_cuda_routing_free(r);
            CHECK(pk_cuda_forward(g, 0, &next, 1, NULL, 0) == 0, "%s: a call once the routing ended: %s", specs[i],
                  pikv_last_error());
            CHECK(pk_cuda_truncate(g, 0, 0) == 0, "truncate: %s", pikv_last_error());
        }
        pk_cuda_batch_run run;
        CHECK(p && g && pk_cuda_run_batch(g, m, prompt, 32, p, 2, 4, &run) == -1 &&
                  strstr(pikv_last_error(), what[i]) &&
                  strstr(pikv_last_error(), "runs one sequence (batch 1), through a session (generate, eval, compare) "
                                            "or bench --batch 1, not a batch of 2"),
              "%s: a batch of 2: %s", specs[i], pikv_last_error());
        pk_cuda_capacity cap;
        CHECK(p && g && pk_cuda_plan_capacity(g, m, prompt, 32, p, 4, (size_t)1 << 26, &cap) == -1 &&
                  strstr(pikv_last_error(), what[i]) && strstr(pikv_last_error(), "not in a capacity run"),
              "%s: a capacity run: %s", specs[i], pikv_last_error());
        pikv_press_free(p);
        pk_cuda_session_free(g);
    }
}

int main(void)
{
    if (!pk_cuda_available()) {
        printf("test_cuda_press: skipped (%s)\n", pikv_last_error());
        return check_done("test_cuda_press");
    }
    pikv_model *m = pikv_model_load(MODEL);
    CHECK(m != NULL, "%s: %s", MODEL, pikv_last_error());
    if (!m) return check_done("test_cuda_press");
    static const char *const specs[] = {
        "none", "streaming_llm:0.5", "knorm:0.5", "snapkv:0.5", "expected_attention:0.5", "tova:0.5",
        "observed_attention:0.5", "random:0.5", "keydiff:0.5", "adakv(snapkv):0.5", "pyramidkv:0.5",
        "chunkkv(knorm):0.5", "duo:0.5", "moe_router:0.5", "moe_router:ratio=0.5,router=pikv",
        "moe_router:ratio=0.5,router=hierarchical", "eplb_duo", "composed[knorm:0.3,duo:0.5]", "kvzip:0.5",
        "composed[kvzip:0.3,duo:0.5]", "duo:ratio=0.5,prefill_chunk=64", "duo:ratio=0.5,prefill_chunk=5"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) check_press(m, specs[i], N_DECODE, 0);
    /* These routers share a head's budget among experts found by balanced
     * spherical k-means (an iterative, discontinuous fit) and give each key
     * to its top experts; on this prompt one head's outcome moves with the
     * engines' 1e-6 differences in the keys. */
    static const char *const near_ties[] = {"moe_router:ratio=0.5,router=base", "moe_router:ratio=0.5,router=topk_balanced",
                                            "moe_router:ratio=0.5,router=adaptive"};
    for (size_t i = 0; i < sizeof near_ties / sizeof *near_ties; i++) check_press(m, near_ties[i], N_DECODE, 1);
    check_press(m, "duo:0.75", N_RING_DECODE, 0);
    check_press(m, "duo:ratio=0.75,prefill_chunk=100", N_RING_DECODE, 0);
    check_capacity(m, "none", 1000, 3);
    check_capacity(m, "duo:0.75", 1000, 5);
    check_decoding(m, "decoding(knorm):every=8,target=200", 200);
    check_decoding(m, "decoding(snapkv):every=8,target=200", 200);
    check_decoding(m, "decoding(expected_attention):every=8,target=150", 150);
    check_refusals(m);
    pikv_model_free(m);
    return check_done("test_cuda_press");
}
