/* The CUDA engine against the CPU engine (make test-cuda, on a GPU machine).
 *
 * On the bundled model and the tiny-gpt2 fixture: float32 logits within 1e-4
 * relative L2 of the CPU forward pass and the same 24 greedy tokens; bf16
 * within 2e-2 and the same first greedy token; decoding token by token equal
 * to a prefill of the same sequence; graph replay equal to plain launches;
 * blocks freed by truncation reused (the pool's high-water mark stays put over
 * 100 generate calls) and a truncated sequence continuing as a fresh one; a batch of sequences of different lengths giving each
 * the logits it gets alone; greedy choices taken on the device equal the
 * host's, also when several steps run in one call. Without a GPU it prints a "skipped" line and
 * passes nothing and fails nothing. */
#include "backend/cuda/engine.h"
#include "../check.h"
#include "tokens.h"
#include "pikv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_GREEDY = 24 };

/* The greedy choice, as generation makes it. */
static int argmax(float *x, int n)
{
    static const pikv_sampling greedy = {.greedy = 1};
    return pikv_sample(x, n, &greedy, NULL);
}

static pk_cuda_session *open_session(const pikv_model *m, pk_cuda_dtype t, int max_seq, int graphs)
{
    pk_cuda_params p = {.dtype = t, .max_seq = max_seq, .use_graphs = graphs};
    pk_cuda_session *s = pk_cuda_session_new(m, &p);
    if (!s) fprintf(stderr, "CUDA session: %s\n", pikv_last_error());
    return s;
}

/* All-row logits of an n-token prompt on the CPU and on the device (in dtype
 * t), compared; returns the device's relative L2 distance. */
static double prompt_distance(const pikv_model *m, const int32_t *ids, int n, pk_cuda_dtype t, float *cpu, float *gpu)
{
    const int V = pikv_model_config(m)->vocab_size;
    pikv_session *c = pikv_session_new(m, 0);
    pk_cuda_session *g = open_session(m, t, 1, 1);
    double d = -1;
    if (c && g && pikv_forward(c, ids, n, cpu, 1) == 0 && pk_cuda_forward(g, 0, ids, n, gpu, 1) == 0)
        d = rel_l2(gpu, cpu, (size_t)n * V);
    else
        fprintf(stderr, "forward: %s\n", pikv_last_error());
    pikv_session_free(c);
    pk_cuda_session_free(g);
    return d;
}

static void check_parity(const char *name, const pikv_model *m)
{
    const int V = pikv_model_config(m)->vocab_size, n = 40;
    int32_t ids[40];
    fill_tokens(ids, n, V, 7);
    float *cpu = malloc((size_t)n * V * sizeof *cpu), *gpu = malloc((size_t)n * V * sizeof *gpu);
    /* 40 rows run the cuBLAS path, 5 rows the fused matrix-vector path. */
    for (int rows = 5; rows <= n; rows += n - 5) {
        double d = prompt_distance(m, ids, rows, PK_CUDA_F32, cpu, gpu);
        printf("%s f32, %d-token prompt: logits rel L2 %.2e\n", name, rows, d);
        CHECK(d >= 0 && d < 1e-4, "%s f32 %d rows: rel L2 %.3e (limit 1e-4)", name, rows, d);
        d = prompt_distance(m, ids, rows, PK_CUDA_BF16, cpu, gpu);
        printf("%s bf16, %d-token prompt: logits rel L2 %.2e\n", name, rows, d);
        CHECK(d >= 0 && d < 2e-2, "%s bf16 %d rows: rel L2 %.3e (limit 2e-2)", name, rows, d);
        float *last_c = cpu + (size_t)(rows - 1) * V, *last_g = gpu + (size_t)(rows - 1) * V;
        const int want = argmax(last_c, V), got = argmax(last_g, V);
        float second = -INFINITY;
        for (int i = 0; i < V; i++)
            if (i != want && last_c[i] > second) second = last_c[i];
        CHECK(want == got, "%s bf16 %d rows: first greedy token %d, CPU %d (CPU's top-two margin %.3g)", name, rows,
              got, want, last_c[want] - second);
    }
    free(cpu);
    free(gpu);

    /* 24 greedy tokens after the prompt, f32. */
    pikv_session *c = pikv_session_new(m, 0);
    pk_cuda_session *g = open_session(m, PK_CUDA_F32, 1, 1);
    const pikv_sampling greedy = {.greedy = 1};
    pikv_generation gen = {0};
    int32_t out[N_GREEDY];
    int rc = c && g ? pikv_generate(c, ids, 16, N_GREEDY, &greedy, -1, &gen) : -1;
    if (rc == 0) rc = pk_cuda_generate_greedy(g, 0, ids, 16, N_GREEDY, out);
    CHECK(rc == 0 && gen.n_ids == N_GREEDY, "%s greedy: %s", name, pikv_last_error());
    int same = rc == 0 && gen.n_ids == N_GREEDY;
    for (int i = 0; same && i < N_GREEDY; i++) same = out[i] == gen.ids[i];
    CHECK(same, "%s f32: the %d greedy tokens differ from the CPU's", name, N_GREEDY);
    printf("%s f32: %d greedy tokens %s the CPU's\n", name, N_GREEDY, same ? "equal" : "DIFFER from");
    pikv_free(gen.ids);
    pikv_session_free(c);
    pk_cuda_session_free(g);
}

/* Prefill k tokens, then decode the rest one by one, against one prefill of
 * all n; and graph replay against plain launches (bit for bit). */
static void check_decode_equals_prefill(const char *name, const pikv_model *m, pk_cuda_dtype t, double limit)
{
    const int V = pikv_model_config(m)->vocab_size, n = 48, k = 20;
    int32_t ids[48];
    fill_tokens(ids, n, V, 11);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b), *e = malloc((size_t)V * sizeof *e);
    pk_cuda_session *whole = open_session(m, t, 1, 1), *graph = open_session(m, t, 1, 1),
                    *eager = open_session(m, t, 1, 0);
    int rc = whole && graph && eager ? pk_cuda_forward(whole, 0, ids, n, a, 0) : -1;
    if (rc == 0) rc = pk_cuda_forward(graph, 0, ids, k, NULL, 0) | pk_cuda_forward(eager, 0, ids, k, NULL, 0);
    for (int i = k; rc == 0 && i < n; i++)
        rc = pk_cuda_decode(graph, &ids[i], 1, b) | pk_cuda_decode(eager, &ids[i], 1, e);
    CHECK(rc == 0, "%s decode: %s", name, pikv_last_error());
    if (rc == 0) {
        double d = rel_l2(b, a, (size_t)V);
        printf("%s %s: decode by token vs prefill, rel L2 %.2e\n", name, t == PK_CUDA_F32 ? "f32" : "bf16", d);
        CHECK(d < limit, "%s: decode by token is %.3e from the prefill (limit %.0e)", name, d, limit);
        CHECK(memcmp(b, e, (size_t)V * sizeof *b) == 0, "%s: graph replay differs from plain launches", name);
        CHECK(pk_cuda_position(graph, 0) == n, "%s: position %d after %d tokens", name, pk_cuda_position(graph, 0), n);
    }
    pk_cuda_session_free(whole);
    pk_cuda_session_free(graph);
    pk_cuda_session_free(eager);
    free(a);
    free(b);
    free(e);
}

/* Truncation frees blocks, the next call takes them back, and the high-water
 * mark does not grow over 100 generate calls; a truncated sequence continues
 * exactly as one that never held the entries cut off. */
static void check_block_reuse(const char *name, const pikv_model *m)
{
    const pikv_config *cfg = pikv_model_config(m);
    const int V = cfg->vocab_size, n_lh = cfg->n_layer * cfg->n_head;
    int32_t ids[64], out[12];
    pk_cuda_session *g = open_session(m, PK_CUDA_F32, 1, 1);
    if (!g) {
        CHECK(0, "%s: no session", name);
        return;
    }
    pk_cuda_stats st;
    size_t high = 0;
    int rc = 0, grew = 0;
    for (int call = 0; rc == 0 && call < 100; call++) {
        fill_tokens(ids, 26 - call % 7, V, (uint64_t)call);
        rc = pk_cuda_truncate(g, 0, 0);
        if (rc == 0) rc = pk_cuda_generate_greedy(g, 0, ids, 26 - call % 7, 12, out);
        pk_cuda_get_stats(g, &st);
        if (call == 0) high = st.kv_high_water;
        grew += st.kv_high_water != high;
    }
    CHECK(rc == 0, "%s reuse: %s", name, pikv_last_error());
    CHECK(grew == 0 && high > 0, "%s: high-water mark grew in %d of 100 calls (first %zu bytes, now %zu)", name, grew,
          high, st.kv_high_water);
    /* The first call is the longest, 26 + 11 = 37 entries: 3 blocks of 16 per head. */
    CHECK(high == (size_t)3 * n_lh * st.block_bytes, "%s: high-water %zu bytes, expected %zu", name, high,
          (size_t)3 * n_lh * st.block_bytes);
    pk_cuda_truncate(g, 0, 20);
    pk_cuda_get_stats(g, &st);
    CHECK(st.blocks_in_use == 2 * n_lh, "%s: %d blocks in use after truncating to 20 entries, expected %d", name,
          st.blocks_in_use, 2 * n_lh);
    CHECK(st.kv_bytes_in_use == (size_t)2 * n_lh * st.block_bytes, "%s: %zu bytes in use", name, st.kv_bytes_in_use);
    printf("%s: high-water %zu bytes over 100 generate calls; %d blocks of %zu bytes after truncating to 20\n", name,
           high, st.blocks_in_use, st.block_bytes);

    /* The sequence now holds the first 20 tokens of the last call's 25-token
     * prompt; 10 more tokens must give the logits of those 30 run afresh. */
    fill_tokens(ids, 25, V, 99);
    fill_tokens(ids + 20, 10, V, 1234);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    pk_cuda_session *fresh = open_session(m, PK_CUDA_F32, 1, 1);
    rc = fresh ? pk_cuda_forward(fresh, 0, ids, 30, a, 0) : -1;
    if (rc == 0) rc = pk_cuda_forward(g, 0, ids + 20, 10, b, 0);
    const double d = rc == 0 ? rel_l2(b, a, (size_t)V) : -1;
    printf("%s: truncated to 20, then 10 tokens, against 30 afresh: rel L2 %.2e\n", name, d);
    CHECK(rc == 0 && d < 1e-4, "%s: a truncated sequence continues %.3e away from a fresh one (%s)", name, d,
          rc ? pikv_last_error() : "limit 1e-4");
    free(a);
    free(b);
    pk_cuda_session_free(fresh);
    pk_cuda_session_free(g);
}

/* B sequences of different lengths decoded together, each against the same
 * sequence run alone. B over 8 takes the cuBLAS path inside the graph. */
static void check_batch(const char *name, const pikv_model *m, int B, double limit)
{
    const int V = pikv_model_config(m)->vocab_size, steps = 6;
    pk_cuda_session *batch = open_session(m, PK_CUDA_F32, B, 1), *alone = open_session(m, PK_CUDA_F32, 1, 1);
    float *lb = malloc((size_t)B * V * sizeof *lb), *la = malloc((size_t)V * sizeof *la);
    int32_t prompt[128], next[16];
    int rc = batch && alone ? 0 : -1;
    for (int b = 0; rc == 0 && b < B; b++) {
        fill_tokens(prompt, 3 + 7 * b, V, 100 + (uint64_t)b);
        rc = pk_cuda_forward(batch, b, prompt, 3 + 7 * b, NULL, 0);
    }
    int32_t tokens[16][6];
    for (int b = 0; b < B; b++) fill_tokens(tokens[b], steps, V, 200 + (uint64_t)b);
    for (int i = 0; rc == 0 && i < steps; i++) {
        for (int b = 0; b < B; b++) next[b] = tokens[b][i];
        rc = pk_cuda_decode(batch, next, B, lb);
    }
    double worst = 0;
    for (int b = 0; rc == 0 && b < B; b++) {
        fill_tokens(prompt, 3 + 7 * b, V, 100 + (uint64_t)b);
        rc = pk_cuda_truncate(alone, 0, 0);
        if (rc == 0) rc = pk_cuda_forward(alone, 0, prompt, 3 + 7 * b, NULL, 0);
        for (int i = 0; rc == 0 && i < steps; i++) rc = pk_cuda_decode(alone, &tokens[b][i], 1, la);
        if (rc) break;
        double d = rel_l2(lb + (size_t)b * V, la, (size_t)V);
        if (d > worst) worst = d;
    }
    CHECK(rc == 0, "%s batch %d: %s", name, B, pikv_last_error());
    CHECK(rc == 0 && worst < limit, "%s batch %d: a sequence's logits are %.3e from its own run (limit %.0e)", name,
          B, worst, limit);
    printf("%s f32, batch of %d: largest rel L2 to the sequence alone %.2e\n", name, B, worst);
    pk_cuda_session_free(batch);
    pk_cuda_session_free(alone);
    free(lb);
    free(la);
}

/* Greedy choices taken on the device equal the host's argmax of the same
 * step's logits, for a batch of 4 over 20 steps; the same 20 steps run as one
 * call (each choice fed to the next step on the device; a graph of 16 steps
 * replayed once, then a graph of one step four times) choose the same tokens
 * and leave the sequences where the step-by-step run leaves them: the next
 * step's logits are equal. */
static void check_greedy_on_device(const char *name, const pikv_model *m)
{
    enum { B = 4, STEPS = 20 };
    const int V = pikv_model_config(m)->vocab_size;
    pk_cuda_session *a = open_session(m, PK_CUDA_BF16, B, 1), *b = open_session(m, PK_CUDA_BF16, B, 1);
    pk_cuda_session *c = open_session(m, PK_CUDA_BF16, B, 1);
    float *logits = malloc((size_t)B * V * sizeof *logits), *after = malloc((size_t)B * V * sizeof *after);
    int32_t prompt[40], host[B], device[B], first[B], chosen[STEPS * B];
    int rc = a && b && c && logits && after ? 0 : -1, same = 1, same_steps = 1;
    for (int i = 0; rc == 0 && i < B; i++) {
        fill_tokens(prompt, 10 + 7 * i, V, 300 + (uint64_t)i);
        rc = pk_cuda_forward(a, i, prompt, 10 + 7 * i, logits, 0) || pk_cuda_forward(b, i, prompt, 10 + 7 * i, NULL, 0) ||
             pk_cuda_forward(c, i, prompt, 10 + 7 * i, NULL, 0);
        host[i] = device[i] = first[i] = argmax(logits, V);
    }
    if (rc == 0) rc = pk_cuda_decode_greedy_steps(c, first, B, STEPS, chosen);
    for (int t = 0; rc == 0 && t < STEPS; t++) {
        rc = pk_cuda_decode(a, host, B, logits) || pk_cuda_decode_greedy(b, device, B, device);
        for (int i = 0; rc == 0 && i < B; i++) {
            host[i] = argmax(logits + (size_t)i * V, V);
            same &= host[i] == device[i];
            same_steps &= chosen[t * B + i] == device[i];
        }
    }
    if (rc == 0) rc = pk_cuda_decode(b, device, B, logits) || pk_cuda_decode(c, chosen + (STEPS - 1) * B, B, after);
    const double d = rc == 0 ? rel_l2(after, logits, (size_t)B * V) : 1;
    CHECK(rc == 0 && same, "%s: greedy choices on the device differ from the host's argmax: %s", name,
          rc ? pikv_last_error() : "");
    CHECK(rc == 0 && same_steps && d == 0, "%s: %d greedy steps in one call: same choices %d, next logits rel L2 %.2e",
          name, STEPS, same_steps, d);
    printf("%s bf16, batch of %d: %d greedy steps chosen on the device %s the host's argmax; in one call: %s "
           "choices, next logits rel L2 %.1e\n",
           name, B, STEPS, same ? "equal" : "DIFFER from", same_steps ? "the same" : "OTHER", d);
    pk_cuda_session_free(a);
    pk_cuda_session_free(b);
    pk_cuda_session_free(c);
    free(logits);
    free(after);
}

int main(void)
{
    if (!pk_cuda_available()) {
        printf("test_cuda: skipped (%s)\n", pikv_last_error());
        return check_done("test_cuda");
    }
    char dev[256];
    if (pk_cuda_describe(dev, sizeof dev) == 0) printf("device: %s\n", dev);
    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s/fixtures/tiny-gpt2", shared_dir());
    const char *dirs[2] = {"models/pikv-ref-14m", tiny}, *names[2] = {"pikv-ref-14m", "tiny-gpt2"};
    for (int i = 0; i < 2; i++) {
        pikv_model *m = pikv_model_load(dirs[i]);
        CHECK(m != NULL, "%s: %s", dirs[i], pikv_last_error());
        if (!m) continue;
        check_parity(names[i], m);
        check_decode_equals_prefill(names[i], m, PK_CUDA_F32, 1e-4);
        check_decode_equals_prefill(names[i], m, PK_CUDA_BF16, 2e-2);
        check_block_reuse(names[i], m);
        check_batch(names[i], m, 4, 1e-5);
        check_batch(names[i], m, 12, 1e-4);
        check_greedy_on_device(names[i], m);
        pikv_model_free(m);
    }
    return check_done("test_cuda");
}
