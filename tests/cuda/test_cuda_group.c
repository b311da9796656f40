/* Decoding on several GPUs (engine/cuda/group_cuda.h) against one GPU, float32
 * weights and cache, bundled model (make test-cuda, on a GPU machine).
 *
 * Two sequences with different 300-token prompts go through a press on one
 * session, and on groups of 2 and 3 ranks, all on GPU 0 and exchanging by
 * host-ordered copies (what one GPU allows; NCCL refuses two ranks on one
 * GPU). For none, duo:0.5 and moe_router:0.5: the ranks' entries add up to
 * the one session's (no entry is held twice), 24 decode steps give logits
 * within 1e-4 relative L2 of the one session's with every rank agreeing to
 * the bit (the group checks that), and afterwards each head's entries over
 * the ranks are again the one session's. duo:0.75 over 1,000-token prompts on
 * 3 ranks must have caches cut into slices on several GPUs, and is checked
 * the same way. A group of one rank over NCCL is
 * run where libnccl.so.2 can be loaded and checked the same way; with two or
 * more GPUs present, a 2-GPU NCCL group too. Misuse is refused in one line.
 * Without a GPU it prints "skipped". */
#include "backend/cuda/engine.h"
#include "engine/cuda/group_cuda.h"
#include "engine/cuda/press_cuda.h"
#include "../check.h"
#include "tokens.h"
#include "pikv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_SEQ = 2, N_PROMPT = 300, N_LONG_PROMPT = 1000, N_DECODE = 24 };

static const char *const MODEL = "models/pikv-ref-14m";

/* The first largest logit of each of n_seq rows. */
static void argmax_rows(const float *logits, int n_seq, int V, int32_t *ids)
{
    for (int b = 0; b < n_seq; b++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[(size_t)b * V + v] > logits[(size_t)b * V + best]) best = v;
        ids[b] = best;
    }
}

/* Entries of (seq, layer, head) summed over the group's ranks. */
static int group_head_entries(pk_cuda_group *g, int n_gpu, int seq, int layer, int head)
{
    int total = 0;
    for (int r = 0; r < n_gpu; r++) total += pk_cuda_head_length(pk_cuda_group_session(g, r), seq, layer, head, NULL);
    return total;
}

/* That every head holds as many entries over the group's ranks as in the one session. */
static int same_entries(const pikv_config *c, pk_cuda_group *g, int n_gpu, pk_cuda_session *one, const char *what)
{
    int wrong = 0;
    for (int b = 0; b < N_SEQ; b++)
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++)
                wrong += group_head_entries(g, n_gpu, b, l, h) != pk_cuda_head_length(one, b, l, h, NULL);
    CHECK(wrong == 0, "%s: %d heads hold other numbers of entries over the GPUs than on one GPU", what, wrong);
    return wrong == 0;
}

/* A group of n_gpu ranks against one session, prompts of n_prompt tokens;
 * with want_cuts, EPLB must have cut some caches over several GPUs. */
static void check_group(const pikv_model *m, const char *spec, int n_gpu, int one_device, int n_prompt, int want_cuts)
{
    const pikv_config *c = pikv_model_config(m);
    const int V = c->vocab_size;
    char what[128];
    snprintf(what, sizeof what, "%s on %d rank%s (%s, %d-token prompts)", spec, n_gpu, n_gpu > 1 ? "s" : "",
             one_device ? "one GPU, host copies" : "NCCL", n_prompt);
    pikv_press *p1 = strcmp(spec, "none") ? pikv_press_new(spec, m, MODEL) : NULL;
    pikv_press *pg = strcmp(spec, "none") ? pikv_press_new(spec, m, MODEL) : NULL;
    const pk_cuda_params sp = {.dtype = PK_CUDA_F32, .max_seq = N_SEQ, .use_graphs = 1};
    const pk_cuda_group_params gp = {.n_gpu = n_gpu, .one_device = one_device, .session = sp, .policy = PK_PLACE_EPLB};
    pk_cuda_session *one = pk_cuda_session_new(m, &sp);
    pk_cuda_group *g = pk_cuda_group_new(m, &gp);
    CHECK(one && g, "%s: %s", what, pikv_last_error());
    int32_t prompt[N_LONG_PROMPT], ids[N_SEQ];
    float *ref = malloc((size_t)N_SEQ * V * sizeof *ref), *got = malloc((size_t)N_SEQ * V * sizeof *got);
    int rc = one && g && ref && got && (strcmp(spec, "none") == 0 || (p1 && pg)) ? 0 : -1;
    for (int b = 0; rc == 0 && b < N_SEQ; b++) {
        fill_tokens(prompt, n_prompt, V, 100 + b);
        rc = pk_cuda_use_device(0) ||
             pk_cuda_prefill_press(one, m, b, prompt, n_prompt, p1, ref + (size_t)b * V, NULL) ||
             pk_cuda_group_prefill(g, b, prompt, n_prompt, pg, got + (size_t)b * V);
    }
    CHECK(rc == 0, "%s: prefill: %s", what, pikv_last_error());
    pk_cuda_group_report rep;
    if (rc == 0) rc = pk_cuda_group_place(g, N_SEQ, &rep);
    CHECK(rc == 0, "%s: placement: %s", what, pikv_last_error());
    if (rc == 0) {
        long held = 0, total = 0;
        for (int r = 0; r < n_gpu; r++) held += rep.entries[r];
        for (int b = 0; b < N_SEQ; b++)
            for (int l = 0; l < c->n_layer; l++)
                for (int h = 0; h < c->n_head; h++) total += pk_cuda_head_length(one, b, l, h, NULL);
        CHECK(held == total, "%s: the ranks report %ld entries, one GPU holds %ld", what, held, total);
        printf("%s: entries per GPU", what);
        for (int r = 0; r < n_gpu; r++) printf(" %ld (%zu bytes)", rep.entries[r], rep.kv_bytes[r]);
        printf("; load max/mean %.3f (equal count of heads %.3f), %ld caches cut\n", rep.imbalance,
               rep.equal_imbalance, rep.split_shards);
        CHECK(!want_cuts || rep.split_shards > 0, "%s: no cache was cut over GPUs, so slices go untested", what);
        rc = same_entries(c, g, n_gpu, one, what) ? 0 : -1;
    }
    double worst = 0;
    int steps = 0;
    for (; rc == 0 && steps < N_DECODE; steps++) {
        argmax_rows(ref, N_SEQ, V, ids);
        rc = pk_cuda_use_device(0) || pk_cuda_decode(one, ids, N_SEQ, ref) || pk_cuda_group_decode(g, ids, N_SEQ, got);
        const double d = rc ? INFINITY : rel_l2(ref, got, (size_t)N_SEQ * V);
        worst = d > worst ? d : worst;
    }
    CHECK(rc == 0, "%s: decode step %d: %s", what, steps, pikv_last_error());
    CHECK(worst <= 1e-4, "%s: logits over %d decode steps: worst rel L2 %.3e to one GPU's", what, N_DECODE, worst);
    if (rc == 0) {
        printf("%s: %d decode steps, worst rel L2 %.2e to one GPU\n", what, N_DECODE, worst);
        same_entries(c, g, n_gpu, one, what);
        /* Greedy steps on the device: every rank must choose the same tokens (the group compares them). */
        int32_t chosen[4 * N_SEQ];
        argmax_rows(ref, N_SEQ, V, ids);
        CHECK(pk_cuda_group_decode_greedy_steps(g, ids, N_SEQ, 4, chosen) == 0, "%s: greedy steps: %s", what,
              pikv_last_error());
        CHECK(pk_cuda_group_prefill(g, 0, prompt, 8, pg, NULL) == -1 && strstr(pikv_last_error(), "placed"),
              "%s: a prefill after placement was not refused (%s)", what, pikv_last_error());
    }
    pk_cuda_group_free(g);
    pk_cuda_use_device(0);
    pk_cuda_session_free(one);
    pikv_press_free(p1);
    pikv_press_free(pg);
    free(ref);
    free(got);
}

int main(void)
{
    if (!pk_cuda_available()) {
        printf("test_cuda_group: skipped (%s)\n", pikv_last_error());
        return check_done("test_cuda_group");
    }
    pikv_model *m = pikv_model_load(MODEL);
    CHECK(m != NULL, "%s: %s", MODEL, pikv_last_error());
    if (!m) return check_done("test_cuda_group");
    static const char *const specs[] = {"none", "duo:0.5", "moe_router:0.5"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        check_group(m, specs[i], 2, 1, N_PROMPT, 0);
        check_group(m, specs[i], 3, 1, N_PROMPT, 0);
    }
    /* Long retrieval heads beside 320-entry rings, on 3 ranks: EPLB cuts some
     * caches into slices on several GPUs, whose states the exchange merges. */
    check_group(m, "duo:0.75", 3, 1, N_LONG_PROMPT, 1);
    /* NCCL: one rank runs on any GPU; two need two GPUs. */
    const pk_cuda_group_params probe = {.n_gpu = 1, .session = {.dtype = PK_CUDA_F32, .max_seq = N_SEQ}};
    pk_cuda_group *g = pk_cuda_group_new(m, &probe);
    if (g) {
        pk_cuda_group_free(g);
        check_group(m, "duo:0.5", 1, 0, N_PROMPT, 0);
        if (pk_cuda_device_count() >= 2) check_group(m, "duo:0.5", 2, 0, N_PROMPT, 0);
        else printf("test_cuda_group: NCCL over 2 GPUs skipped (%d GPU present)\n", pk_cuda_device_count());
    } else {
        printf("test_cuda_group: NCCL skipped (%s)\n", pikv_last_error());
    }
    const pk_cuda_group_params too_many = {.n_gpu = pk_cuda_device_count() + 1, .session = {.max_seq = 1}};
    CHECK(pk_cuda_group_new(m, &too_many) == NULL && strstr(pikv_last_error(), "present"),
          "asking for more GPUs than present was not refused (%s)", pikv_last_error());
    pikv_model_free(m);
    return check_done("test_cuda_group");
}
