/* Parity of the forward pass with Hugging Face transformers, on the fixtures:
 * logits, layer-0 keys and values, and greedy continuations, for the bundled
 * model (F16, `transformer.` names) and for tiny-gpt2 (BF16, bare names, BOOL
 * mask buffers, n_ctx: the layout of the real gpt2 checkpoint). Also checks that
 * decoding token by token through the cache equals one full prefill. */
#include "check.h"
#include "model_test.h"
#include "model/safetensors.h"
#include "pikv.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static const pk_st_tensor *golden(const pk_safetensors *g, const char *fmt, int i)
{
    char name[64];
    snprintf(name, sizeof name, fmt, i);
    return pk_st_find(g, name);
}

/* Compare one model against its golden file for prompts 0..n_prompts-1. */
static void check_parity(const char *label, const char *model_dir, const char *golden_path, int n_prompts)
{
    pikv_model *m = pikv_model_load(model_dir);
    CHECK(m != NULL, "%s: load: %s", label, pikv_last_error());
    pk_safetensors g;
    int opened = pk_st_open(&g, golden_path) == 0;
    CHECK(opened, "%s: %s", label, pikv_last_error());
    if (!m || !opened) {
        pikv_model_free(m);
        if (opened) pk_st_close(&g);
        return;
    }
    const pikv_config *c = pikv_model_config(m);
    const int V = c->vocab_size, hd = c->head_dim;
    pikv_session *s = pikv_session_new(m, 2);
    for (int p = 0; p < n_prompts; p++) {
        const pk_st_tensor *ids_t = golden(&g, "ids_%d", p), *logits_t = golden(&g, "logits_%d", p);
        const pk_st_tensor *greedy_t = golden(&g, "greedy_%d", p);
        CHECK(ids_t && logits_t && greedy_t, "%s: prompt %d missing in golden file", label, p);
        if (!ids_t || !logits_t || !greedy_t) continue;
        const int T = (int)ids_t->numel, rows = (int)logits_t->shape[0];
        const int32_t *ids = (const int32_t *)ids_t->data;
        const float *ref = (const float *)logits_t->data;
        float *logits = malloc((size_t)T * V * sizeof(float));
        pikv_session_reset(s);
        CHECK(pikv_forward(s, ids, T, logits, 1) == 0, "%s: forward: %s", label, pikv_last_error());
        double worst = 0;
        for (int r = 0; r < rows; r++) {
            int t = T - rows + r;
            worst = fmax(worst, rel_l2(logits + (size_t)t * V, ref + (size_t)r * V, (size_t)V));
        }
        CHECK(worst < 1e-4, "%s: prompt %d (%d tokens): logits relative L2 error %.3g >= 1e-4", label, p, T, worst);

        const pk_st_tensor *k0 = golden(&g, "k0_%d", p), *v0 = golden(&g, "v0_%d", p);
        if (k0 && v0) { /* [n_head, T, hd] */
            float *row = malloc((size_t)T * hd * sizeof(float));
            double kerr = 0, verr = 0;
            for (int h = 0; h < c->n_head; h++) {
                pikv_session_kv_read(s, 0, h, 0, row, T);
                kerr = fmax(kerr, max_abs_diff(row, (const float *)k0->data + (size_t)h * T * hd, (size_t)T * hd));
                pikv_session_kv_read(s, 0, h, 1, row, T);
                verr = fmax(verr, max_abs_diff(row, (const float *)v0->data + (size_t)h * T * hd, (size_t)T * hd));
            }
            CHECK(kerr < 1e-5 && verr < 1e-5, "%s: prompt %d: layer-0 K/V max error %.3g / %.3g >= 1e-5", label, p,
                  kerr, verr);
            free(row);
        }

        /* Greedy continuation through the cache, token by token. */
        pikv_session_reset(s);
        pikv_generation gen;
        pikv_sampling greedy = {.greedy = 1};
        int n_greedy = (int)greedy_t->numel;
        CHECK(pikv_generate(s, ids, T, n_greedy, &greedy, -1, &gen) == 0, "%s: generate: %s", label,
              pikv_last_error());
        CHECK(gen.n_ids == n_greedy && memcmp(gen.ids, greedy_t->data, (size_t)n_greedy * 4) == 0,
              "%s: prompt %d: greedy tokens differ from Hugging Face", label, p);
        pikv_free(gen.ids);
        free(logits);
    }
    pikv_session_free(s);
    pk_st_close(&g);
    pikv_model_free(m);
}

/* Decoding one token at a time must give the logits of a full prefill. */
static void check_decode_matches_prefill(void)
{
    pikv_model *m = pikv_model_load("models/pikv-ref-14m");
    CHECK(m != NULL, "load: %s", pikv_last_error());
    if (!m) return;
    const int T = 150;
    pikv_session *s = pikv_session_new(m, 2);
    const double worst = decode_vs_prefill(s, pikv_model_config(m)->vocab_size, T, 100);
    CHECK(worst >= 0 && worst < 1e-5, "decode vs prefill: relative L2 error %.3g >= 1e-5", worst);
    CHECK(pikv_session_position(s) == T, "position after decoding: %d", pikv_session_position(s));

    /* The position limit is an error, not a crash. */
    int32_t *many = calloc(2049, sizeof *many);
    pikv_session_reset(s);
    CHECK(pikv_forward(s, many, 2049, NULL, 0) != 0 && strstr(pikv_last_error(), "n_positions"),
          "2049 tokens must exceed n_positions: %s", pikv_last_error());
    free(many);
    pikv_session_free(s);
    pikv_model_free(m);
}

/* The option structs: their documented defaults, and a session and a
 * generation made from them behave as the plain calls do. */
static void check_default_params(void)
{
    pikv_session_params sp = pikv_session_default_params();
    CHECK(sp.n_threads == 0 && sp.workers == 0 && sp.balanced_workers == 1, "session defaults");
    pikv_generation_params gp = pikv_generation_default_params();
    CHECK(gp.max_new_tokens == 32 && gp.sampling.greedy == 1 && gp.stop_id == -1, "generation defaults");
    pikv_model *m = pikv_model_load("models/pikv-ref-14m");
    if (!m) return;
    sp.n_threads = 2;
    sp.workers = 2;
    pikv_session *a = pikv_session_new_with_params(m, &sp), *b = pikv_session_new(m, 2);
    CHECK(a && pikv_session_threads(a) == 2, "session from params");
    const int32_t prompt[] = {12, 279, 268, 199};
    pikv_generation ga, gb;
    gp.max_new_tokens = 8;
    int ra = pikv_generate_with_params(a, prompt, 4, &gp, &ga);
    int rb = pikv_generate(b, prompt, 4, 8, &gp.sampling, -1, &gb);
    CHECK(ra == 0 && rb == 0 && ga.n_ids == 8 && gb.n_ids == 8 && memcmp(ga.ids, gb.ids, 8 * sizeof *ga.ids) == 0,
          "generation from params (on 2 placed workers) = the plain call");
    CHECK(pikv_session_worker_imbalance(a) >= 1.0, "the params' workers ran the decode attention");
    if (ra == 0) pikv_free(ga.ids);
    if (rb == 0) pikv_free(gb.ids);
    sp.workers = 5000;
    CHECK(pikv_session_new_with_params(m, &sp) == NULL && strstr(pikv_last_error(), "workers"),
          "out-of-range workers refused: %s", pikv_last_error());
    pikv_session_free(a);
    pikv_session_free(b);
    pikv_model_free(m);
}

int main(void)
{
    char golden_path[512], tiny_dir[512], tiny_golden[512];
    snprintf(golden_path, sizeof golden_path, "%s/fixtures/golden_shared.safetensors", shared_dir());
    snprintf(tiny_dir, sizeof tiny_dir, "%s/fixtures/tiny-gpt2", shared_dir());
    snprintf(tiny_golden, sizeof tiny_golden, "%s/fixtures/golden_tiny_gpt2.safetensors", shared_dir());
    check_parity("pikv-ref-14m", "models/pikv-ref-14m", golden_path, 6);
    check_parity("tiny-gpt2", tiny_dir, tiny_golden, 2);
    check_decode_matches_prefill();
    check_default_params();
    return check_done("model");
}
