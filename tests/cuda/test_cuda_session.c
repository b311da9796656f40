/* Sessions on the CUDA engine (pikv_session_params.device = "cuda") against
 * CPU sessions, float32 weights and cache on both, bundled model (make
 * test-cuda, on a GPU machine).
 *
 * The library's own calls, unchanged, run on the GPU: pikv_answer on needle
 * tasks with none, duo, knorm, snapkv, eplb_duo and kvzip (decided by the CPU
 * engine, kept on the GPU) gives the CPU's greedy answers; after a
 * DuoAttention prefill, a 64-token call with every row's logits (each row
 * sees its window, then the rings are cut back), then 3 decoded tokens that
 * roll the rings and a 16-token call (which the rolled rings take one token
 * at a time) give the CPU's logits within 1e-4 relative L2 per row, and the
 * prompt prefilled in 128-token chunks (prefill_chunk) answers as the CPU's;
 * pikv compare's quality measurement (retrieval and perplexity) gives the
 * CPU's figures; greedy generation (chosen on the device) and sampled
 * generation (logits to the host) give the CPU's tokens, and after 120
 * greedy tokens over a DuoAttention cache every head reports the CPU's
 * number of entries (a ring its window, not the tokens it took); a press
 * that cuts the cache while decoding (decoding(...)) answers and generates
 * as on the CPU, every head holding the CPU's number of entries. What a
 * device does not do is refused by name. Without a GPU it prints "skipped". */
#include "backend/cuda/engine.h"
#include "bench/compare.h"
#include "engine/cuda/session_cuda.h"
#include "engine/session.h"
#include "eval/quality.h"
#include "../check.h"
#include "tokens.h"
#include "pikv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const MODEL = "models/pikv-ref-14m";

static pikv_session *open_session(const pikv_model *m, const char *device)
{
    pikv_session_params p = pikv_session_default_params();
    p.n_threads = 2;
    p.device = device;
    p.device_weights = PIKV_WEIGHTS_F32;
    pikv_session *s = pikv_session_new_with_params(m, &p);
    if (!s) fprintf(stderr, "%s session: %s\n", device, pikv_last_error());
    return s;
}

/* Each press answers the same needle tasks on both engines. */
static void check_answers(const pikv_model *m, pikv_session *cpu, pikv_session *gpu, const pk_haystack *h)
{
    static const char *const specs[] = {"none",     "duo:0.75",  "knorm:0.5", "snapkv:0.5",
                                        "eplb_duo", "kvzip:0.5", "duo:ratio=0.75,prefill_chunk=128",
                                        "decoding(knorm):every=4,target=512"};
    const pk_retrieval_config rc = {.n_tasks = 4, .min_tokens = 1000, .max_tokens = 1800, .seed = 3};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        /* One press per session: a press that acts while decoding keeps its sequence's state. */
        pikv_press *p = pikv_press_new(specs[i], m, MODEL), *pg = pikv_press_new(specs[i], m, MODEL);
        for (int t = 0; p && pg && t < rc.n_tasks; t++) {
            pk_task task;
            if (pk_retrieval_task(h, &rc, t, &task)) break;
            const int32_t *q = task.question;
            const pikv_qa_request rq = {.context = task.context, .n_context = task.n_context, .questions = &q,
                                        .n_question = &task.n_question, .n_questions = 1, .max_new_tokens = 16,
                                        .stop_id = -1};
            pikv_qa_result a, b;
            const int ra = pikv_answer(cpu, p, &rq, &a), rb = pikv_answer(gpu, pg, &rq, &b);
            CHECK(ra == 0 && rb == 0, "%s task %d: answer: %s", specs[i], t, pikv_last_error());
            if (ra == 0 && rb == 0) {
                CHECK(a.n_answer[0] == b.n_answer[0] &&
                          memcmp(a.answers[0], b.answers[0], (size_t)a.n_answer[0] * sizeof(int32_t)) == 0,
                      "%s task %d: the GPU's answer differs from the CPU's", specs[i], t);
                CHECK(b.kv_bytes_after > 0 && b.kv_bytes_after <= b.kv_bytes_before,
                      "%s task %d: GPU KV bytes %zu after, %zu before", specs[i], t, b.kv_bytes_after,
                      b.kv_bytes_before);
            }
            if (ra == 0) pikv_qa_result_free(&a);
            if (rb == 0) pikv_qa_result_free(&b);
            pk_task_free(&task);
        }
        pikv_press_free(p);
        pikv_press_free(pg);
    }
}

/* The worst relative L2 between the rows of two engines' logits, n rows of V. */
static double worst_row(const float *a, const float *b, int n, int V)
{
    double worst = 0;
    for (int r = 0; r < n; r++) {
        const double e = rel_l2(b + (size_t)r * V, a + (size_t)r * V, (size_t)V);
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* A continuation through a DuoAttention cache, every row's logits: a
 * multi-token call while the rings are in position order, decoded tokens
 * that roll them, and a multi-token call after that. */
static void check_ring_continuation(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    enum { N_CONTEXT = 1500, N_CONT = 64, N_ROLL = 3, N_AFTER = 16, N_ALL = N_CONTEXT + N_CONT + N_ROLL + N_AFTER };
    const int V = pikv_model_config(m)->vocab_size;
    int32_t ids[N_ALL];
    fill_tokens(ids, N_ALL, V, 11);
    float *la = malloc((size_t)N_CONT * V * sizeof *la), *lb = malloc((size_t)N_CONT * V * sizeof *lb);
    pikv_press *p = pikv_press_new("duo:0.75", m, MODEL);
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    int rc = la && lb && p ? 0 : -1;
    if (rc == 0) rc = pikv_prefill(cpu, ids, N_CONTEXT, p, NULL) || pikv_prefill(gpu, ids, N_CONTEXT, p, NULL);
    if (rc == 0) rc = pikv_forward(cpu, ids + N_CONTEXT, N_CONT, la, 1) || pikv_forward(gpu, ids + N_CONTEXT, N_CONT, lb, 1);
    CHECK(rc == 0, "duo:0.75 continuation: %s", pikv_last_error());
    const double worst = rc == 0 ? worst_row(la, lb, N_CONT, V) : 1;
    CHECK(rc == 0 && worst < 1e-4, "duo:0.75 continuation: worst row %.3g relative L2 from the CPU's", worst);
    int at = N_CONTEXT + N_CONT;
    for (int i = 0; rc == 0 && i < N_ROLL; i++, at++)
        rc = pikv_forward(cpu, ids + at, 1, NULL, 0) || pikv_forward(gpu, ids + at, 1, NULL, 0);
    if (rc == 0) rc = pikv_forward(cpu, ids + at, N_AFTER, la, 1) || pikv_forward(gpu, ids + at, N_AFTER, lb, 1);
    const double rolled = rc == 0 ? worst_row(la, lb, N_AFTER, V) : 1;
    CHECK(rc == 0 && rolled < 1e-4, "duo:0.75, %d tokens after the rings rolled: worst row %.3g relative L2: %s",
          N_AFTER, rolled, rc ? pikv_last_error() : "");
    CHECK(pikv_session_position(gpu) == N_ALL, "GPU position %d after the continuation", pikv_session_position(gpu));
    /* A streaming head holds sink + recent entries, a retrieval head all of them. */
    int ring = 0, full = 0;
    for (int l = 0; l < pikv_model_config(m)->n_layer; l++)
        for (int h = 0; h < pikv_model_config(m)->n_head; h++) {
            const int n = pikv_session_kv_len(gpu, l, h);
            ring += n == 64 + 256;
            full += n == N_ALL;
            CHECK(n == pikv_session_kv_len(cpu, l, h), "layer %d head %d: %d entries on the GPU, %d on the CPU", l,
                  h, n, pikv_session_kv_len(cpu, l, h));
        }
    CHECK(ring == 27 && full == 9, "%d ring heads and %d full heads", ring, full);
    printf("duo:0.75 continuation of %d tokens: worst row %.2e relative L2; %d after %d decoded: %.2e\n", N_CONT,
           worst, N_AFTER, N_ROLL, rolled);
    pikv_press_free(p);
    free(la);
    free(lb);
}

/* pikv compare's quality measure on both engines. */
static void check_quality(const pikv_model *m, pikv_session *cpu, pikv_session *gpu, const pk_haystack *h)
{
    const pk_quality_config qc = pk_compare_quality_config(h, pikv_model_config(m)->n_positions, 1500, 4, 0, 1);
    static const char *const specs[] = {"duo:0.75", "snapkv:0.5"};
    pk_quality_reference ra = {0}, rb = {0};
    pk_quality base_a, base_b;
    int rc = pk_quality_measure(cpu, NULL, &qc, &ra, NULL, NULL, &base_a) ||
             pk_quality_measure(gpu, NULL, &qc, &rb, NULL, NULL, &base_b);
    CHECK(rc == 0, "quality of none: %s", pikv_last_error());
    for (size_t i = 0; rc == 0 && i < sizeof specs / sizeof *specs; i++) {
        pikv_press *p = pikv_press_new(specs[i], m, MODEL);
        pk_quality a, b;
        const int r = pk_quality_measure(cpu, p, &qc, &ra, NULL, NULL, &a) ||
                      pk_quality_measure(gpu, p, &qc, &rb, NULL, NULL, &b);
        CHECK(r == 0, "quality of %s: %s", specs[i], pikv_last_error());
        if (r == 0) {
            CHECK(a.retrieval_acc == b.retrieval_acc, "%s: retrieval %.2f on the CPU, %.2f on the GPU", specs[i],
                  a.retrieval_acc, b.retrieval_acc);
            CHECK(fabs(b.ppl / a.ppl - 1) < 1e-5 && fabs(b.kl - a.kl) < 1e-5, "%s: ppl %.6f / %.6f, KL %.3g / %.3g",
                  specs[i], a.ppl, b.ppl, a.kl, b.kl);
            printf("%s: retrieval %.2f / %.2f, ppl %.5f / %.5f (CPU / GPU)\n", specs[i], a.retrieval_acc,
                   b.retrieval_acc, a.ppl, b.ppl);
        }
        pikv_press_free(p);
    }
    pk_quality_reference_free(&ra);
    pk_quality_reference_free(&rb);
}

/* Greedy (chosen on the device) and sampled (logits to the host) generation. */
static void check_generation(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    int32_t prompt[40];
    fill_tokens(prompt, 40, pikv_model_config(m)->vocab_size, 21);
    const pikv_sampling modes[] = {{.greedy = 1}, {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 9}};
    for (int i = 0; i < 2; i++) {
        pikv_generation a, b;
        pikv_session_reset(cpu);
        pikv_session_reset(gpu);
        const int ra = pikv_generate(cpu, prompt, 40, 50, &modes[i], -1, &a);
        const int rb = pikv_generate(gpu, prompt, 40, 50, &modes[i], -1, &b);
        CHECK(ra == 0 && rb == 0, "%s generation: %s", i ? "sampled" : "greedy", pikv_last_error());
        if (ra == 0 && rb == 0)
            CHECK(a.n_ids == 50 && b.n_ids == 50 && memcmp(a.ids, b.ids, 50 * sizeof *a.ids) == 0,
                  "%s generation: the GPU's tokens differ from the CPU's", i ? "sampled" : "greedy");
        CHECK(rb != 0 || pikv_session_position(gpu) == 40 + 49, "GPU position %d after 50 generated tokens",
              pikv_session_position(gpu));
        if (ra == 0) pikv_free(a.ids);
        if (rb == 0) pikv_free(b.ids);
    }
}

/* Greedy generation over a DuoAttention cache, many steps in one device
 * call: the tokens and every head's reported entries equal the CPU's, so the
 * host's copy of a ring rolled step by step as the device's did. */
static void check_ring_generation(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    const pikv_config *c = pikv_model_config(m);
    int32_t prompt[300];
    fill_tokens(prompt, 300, c->vocab_size, 23);
    pikv_press *p = pikv_press_new("duo:0.75", m, MODEL);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    const pikv_sampling greedy = {.greedy = 1};
    pikv_generation a = {0}, b = {0};
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    int ra = p && logits ? pikv_prefill(cpu, prompt, 300, p, logits) : -1;
    if (ra == 0) ra = pikv_generate_from(cpu, logits, 120, &greedy, -1, &a);
    int rb = p && logits ? pikv_prefill(gpu, prompt, 300, p, logits) : -1;
    if (rb == 0) rb = pikv_generate_from(gpu, logits, 120, &greedy, -1, &b);
    CHECK(ra == 0 && rb == 0, "duo:0.75 generation: %s", pikv_last_error());
    if (ra == 0 && rb == 0) {
        CHECK(a.n_ids == b.n_ids && memcmp(a.ids, b.ids, (size_t)a.n_ids * sizeof *a.ids) == 0,
              "duo:0.75 generation: the GPU's tokens differ from the CPU's");
        int differ = 0;
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++)
                differ += pikv_session_kv_len(gpu, l, h) != pikv_session_kv_len(cpu, l, h);
        CHECK(differ == 0, "duo:0.75 generation: %d heads report other entry counts on the GPU than on the CPU",
              differ);
        printf("duo:0.75, 120 greedy tokens after 300: same tokens, every head's entries as on the CPU\n");
    }
    if (ra == 0) pikv_free(a.ids);
    if (rb == 0) pikv_free(b.ids);
    pikv_press_free(p);
    free(logits);
}

/* Greedy generation with a press that cuts the cache while decoding (its
 * steps then run through the press on the host): the CPU's tokens, every
 * head's entries as on the CPU, and a press note that says what was copied. */
static void check_decoding_generation(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    static const char spec[] = "decoding(snapkv):every=8,target=64";
    const pikv_config *c = pikv_model_config(m);
    int32_t prompt[200];
    fill_tokens(prompt, 200, c->vocab_size, 25);
    pikv_press *pc = pikv_press_new(spec, m, MODEL), *pg = pikv_press_new(spec, m, MODEL);
    const pikv_sampling greedy = {.greedy = 1};
    pikv_generation a = {0}, b = {0};
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    int ra = pc && logits ? pikv_prefill(cpu, prompt, 200, pc, logits) : -1;
    if (ra == 0) ra = pikv_generate_from(cpu, logits, 60, &greedy, -1, &a);
    int rb = pg && logits ? pikv_prefill(gpu, prompt, 200, pg, logits) : -1;
    if (rb == 0) rb = pikv_generate_from(gpu, logits, 60, &greedy, -1, &b);
    CHECK(ra == 0 && rb == 0, "%s generation: %s", spec, pikv_last_error());
    if (ra == 0 && rb == 0) {
        CHECK(a.n_ids == b.n_ids && memcmp(a.ids, b.ids, (size_t)a.n_ids * sizeof *a.ids) == 0,
              "%s generation: the GPU's tokens differ from the CPU's", spec);
        int differ = 0;
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++)
                differ += pikv_session_kv_len(gpu, l, h) != pikv_session_kv_len(cpu, l, h) ||
                          pikv_session_kv_len(gpu, l, h) != 64 + 59 % 8;
        CHECK(differ == 0, "%s generation: %d heads hold other entry counts than the CPU's 64 + 3", spec, differ);
        CHECK(strstr(pk_session_press_note(gpu), "acts while decoding"), "%s: press note '%s'", spec,
              pk_session_press_note(gpu));
        printf("%s, 60 greedy tokens after 200: same tokens, every head 67 entries as on the CPU; %s\n", spec,
               pk_session_press_note(gpu));
    }
    if (ra == 0) pikv_free(a.ids);
    if (rb == 0) pikv_free(b.ids);
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    pikv_press_free(pc);
    pikv_press_free(pg);
    free(logits);
}

/* Query-time routing (moe_router route=1) on the GPU against the CPU's:
 * after a 300-token prompt compressed by the press, a 7-token call (the
 * routed prompt attention: every row's logits) and 40 greedy tokens (routed
 * decode steps) give the CPU's logits and tokens, and the routing statistics
 * count the same queries, entries read and missed mass. The routed logits
 * are checked to differ from the same press's without routing, so a GPU
 * that read every entry would fail. */
static void check_routed_generation(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    static const char spec[] = "moe_router:ratio=0.5,window=16,route=1,sample=4";
    enum { PROMPT = 300, CALL = 7, GEN = 40 };
    const pikv_config *c = pikv_model_config(m);
    const int V = c->vocab_size;
    int32_t prompt[PROMPT + CALL];
    fill_tokens(prompt, PROMPT + CALL, V, 27);
    pikv_press *pc = pikv_press_new(spec, m, MODEL), *pg = pikv_press_new(spec, m, MODEL);
    pikv_press *plain = pikv_press_new("moe_router:ratio=0.5,window=16", m, MODEL);
    float *a = malloc((size_t)CALL * V * sizeof *a), *b = malloc((size_t)CALL * V * sizeof *b);
    float *unrouted = malloc((size_t)CALL * V * sizeof *unrouted);
    const pikv_sampling greedy = {.greedy = 1};
    pikv_generation ga = {0}, gb = {0};
    pikv_session_reset(cpu);
    int ru = pc && pg && plain && a && b && unrouted ? pikv_prefill(cpu, prompt, PROMPT, plain, NULL) : -1;
    if (ru == 0) ru = pikv_forward(cpu, prompt + PROMPT, CALL, unrouted, 1);
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    int ra = ru == 0 ? pikv_prefill(cpu, prompt, PROMPT, pc, NULL) : -1;
    if (ra == 0) ra = pikv_forward(cpu, prompt + PROMPT, CALL, a, 1);
    int rb = ru == 0 ? pikv_prefill(gpu, prompt, PROMPT, pg, NULL) : -1;
    if (rb == 0) rb = pikv_forward(gpu, prompt + PROMPT, CALL, b, 1);
    /* Compared before generation reuses each call's last row for its steps' logits. */
    const double call_err = rb == 0 && ra == 0 ? worst_row(a, b, CALL, V) : 1;
    const double routing_moves = ra == 0 && ru == 0 ? worst_row(a, unrouted, CALL, V) : 0;
    if (ra == 0) ra = pikv_generate_from(cpu, a + (size_t)(CALL - 1) * V, GEN, &greedy, -1, &ga);
    if (rb == 0) rb = pikv_generate_from(gpu, b + (size_t)(CALL - 1) * V, GEN, &greedy, -1, &gb);
    CHECK(ru == 0 && ra == 0 && rb == 0, "%s: %s", spec, pikv_last_error());
    if (ra == 0 && rb == 0) {
        CHECK(call_err < 1e-4, "%s: a routed %d-token call: worst row's logits %.3g from the CPU's", spec, CALL,
              call_err);
        CHECK(routing_moves > 1e-3, "%s: routing moved the CPU's logits by only %.3g", spec, routing_moves);
        CHECK(ga.n_ids == gb.n_ids && memcmp(ga.ids, gb.ids, (size_t)ga.n_ids * sizeof *ga.ids) == 0,
              "%s: the GPU's %d routed greedy tokens differ from the CPU's", spec, GEN);
        pikv_routing_stats sa, sb;
        CHECK(pikv_press_routing_stats(pc, &sa, 0) == 0 && pikv_press_routing_stats(pg, &sb, 0) == 0,
              "routing stats: %s", pikv_last_error());
        const long triples = (long)(CALL + GEN - 1) * c->n_layer * c->n_head;
        CHECK(sa.queries == triples && sb.queries == triples && sa.sampled == sb.sampled && sb.sampled > 0,
              "%s: %ld and %ld routed queries (%ld expected), %ld and %ld sampled", spec, sa.queries, sb.queries,
              triples, sa.sampled, sb.sampled);
        CHECK(fabs(sa.fraction_read - sb.fraction_read) < 1e-3 && sb.fraction_read < 0.9,
              "%s: the GPU read %.4f of the visible entries, the CPU %.4f", spec, sb.fraction_read, sa.fraction_read);
        CHECK(fabs(sa.mass_missed - sb.mass_missed) < 1e-3,
              "%s: missed attention mass %.5f on the GPU, %.5f on the CPU", spec, sb.mass_missed, sa.mass_missed);
        CHECK(strstr(pk_session_press_note(gpu), "routed on the host"), "%s: press note '%s'", spec,
              pk_session_press_note(gpu));
        printf("%s: a %d-token call within %.2g of the CPU's logits (routing moves them %.2g), %d greedy tokens "
               "the CPU's; read %.4f of the visible entries (CPU %.4f), missed mass %.5f (CPU %.5f)\n",
               spec, CALL, call_err, routing_moves, GEN, sb.fraction_read, sa.fraction_read, sb.mass_missed,
               sa.mass_missed);
    }
    if (ra == 0) pikv_free(ga.ids);
    if (rb == 0) pikv_free(gb.ids);
    pikv_session_reset(cpu);
    pikv_session_reset(gpu);
    pikv_press_free(pc);
    pikv_press_free(pg);
    pikv_press_free(plain);
    free(a);
    free(b);
    free(unrouted);
}

/* Capacity at a budget: floor(budget / bytes per sequence) admitted and
 * decoded together; a CPU session refuses. */
static void check_capacity(const pikv_model *m, pikv_session *cpu, pikv_session *gpu)
{
    int32_t prompt[600];
    fill_tokens(prompt, 600, pikv_model_config(m)->vocab_size, 4);
    pikv_press *p = pikv_press_new("duo:0.75", m, MODEL);
    const size_t budget = (size_t)64 << 20;
    pk_device_capacity k;
    const int rc = pk_session_capacity(gpu, prompt, 600, p, 16, budget, &k);
    CHECK(rc == 0 && k.per_seq_bytes > 0 && k.admitted == (int)(budget / k.per_seq_bytes) && k.ran == k.admitted &&
              k.decode_tok_s > 0,
          "capacity: %d admitted of %zu bytes each, %d ran, %.0f tok/s: %s", k.admitted, k.per_seq_bytes, k.ran,
          k.decode_tok_s, rc ? pikv_last_error() : "");
    printf("capacity of 64 MiB, duo:0.75, 600 + 16 tokens: %d sequences of %.2f MB, %.0f tok/s together\n",
           k.admitted, k.per_seq_bytes / 1e6, k.decode_tok_s);
    CHECK(pikv_session_position(gpu) == 0, "capacity leaves the session's sequence empty (position %d)",
          pikv_session_position(gpu));
    CHECK(pk_session_capacity(cpu, prompt, 600, p, 16, budget, &k) == -1 && strstr(pikv_last_error(), "on a device"),
          "capacity on the CPU: %s", pikv_last_error());
    pikv_press_free(p);
}

/* What a device session does not do, refused with a message naming it. */
static void check_refusals(const pikv_model *m, pikv_session *gpu)
{
    int32_t ids[8];
    fill_tokens(ids, 8, pikv_model_config(m)->vocab_size, 2);
    float rows[64 * 64];
    int32_t pos[64];
    pikv_session_reset(gpu);
    CHECK(pikv_forward(gpu, ids, 8, NULL, 0) == 0, "forward: %s", pikv_last_error());
    CHECK(pikv_session_mark(gpu) == -1 && strstr(pikv_last_error(), "not on the cuda engine"), "mark: %s",
          pikv_last_error());
    CHECK(pikv_session_rewind(gpu) == -1 && strstr(pikv_last_error(), "not on the cuda engine"), "rewind: %s",
          pikv_last_error());
    CHECK(pikv_session_kv_read(gpu, 0, 0, 0, rows, 64) == -1 && strstr(pikv_last_error(), "pikv_session_kv_read"),
          "kv_read: %s", pikv_last_error());
    CHECK(pikv_session_kv_positions(gpu, 0, 0, pos, 64) == -1, "kv_positions: %s", pikv_last_error());
    CHECK(pikv_session_set_workers(gpu, 2, 1) == -1 && strstr(pikv_last_error(), "placed workers"), "workers: %s",
          pikv_last_error());
    CHECK(strcmp(pikv_session_device(gpu), "cuda") == 0, "device %s", pikv_session_device(gpu));
    pikv_kv_type k, v;
    CHECK(pikv_session_kv_types(gpu, &k, &v) == 0 && k == PIKV_KV_F32 && v == PIKV_KV_F32, "kv types %d/%d", k, v);
    pikv_press *p = pikv_press_new("moe_router:ratio=0.5,route=1", m, MODEL);
    pikv_session_reset(gpu);
    pk_device_capacity cap;
    CHECK(p && pk_session_capacity(gpu, ids, 8, p, 4, (size_t)1 << 26, &cap) == -1 &&
              strstr(pikv_last_error(), "routes later queries through its table (route=1): on the GPU it runs one "
                                        "sequence") &&
              strstr(pikv_last_error(), "not in a capacity run"),
          "moe_router route=1 in a capacity run: %s", pikv_last_error());
    pikv_session_reset(gpu);
    pikv_press_free(p);
    pikv_session_params params = pikv_session_default_params();
    params.device = "cuda";
    params.workers = 2;
    CHECK(pikv_session_new_with_params(m, &params) == NULL && strstr(pikv_last_error(), "placed workers"),
          "workers in params: %s", pikv_last_error());
    params.workers = 0;
    params.device = "tpu";
    CHECK(pikv_session_new_with_params(m, &params) == NULL && strstr(pikv_last_error(), "device 'tpu': unknown"),
          "device tpu: %s", pikv_last_error());
}

int main(void)
{
    if (!pk_cuda_available()) {
        printf("test_cuda_session: skipped (%s)\n", pikv_last_error());
        return check_done("test_cuda_session");
    }
    CHECK(pk_cuda_device_register() == 0, "register: %s", pikv_last_error());
    pikv_model *m = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    pk_haystack h = {0};
    CHECK(m && tok && pk_haystack_load(&h, tok, "data/haystack.txt") == 0, "%s: %s", MODEL, pikv_last_error());
    pikv_session *cpu = m ? open_session(m, "cpu") : NULL, *gpu = m ? open_session(m, "cuda") : NULL;
    CHECK(cpu && gpu, "sessions");
    if (cpu && gpu && h.ids) {
        check_answers(m, cpu, gpu, &h);
        check_ring_continuation(m, cpu, gpu);
        check_quality(m, cpu, gpu, &h);
        check_generation(m, cpu, gpu);
        check_ring_generation(m, cpu, gpu);
        check_decoding_generation(m, cpu, gpu);
        check_routed_generation(m, cpu, gpu);
        check_capacity(m, cpu, gpu);
        check_refusals(m, gpu);
    }
    pikv_session_free(cpu);
    pikv_session_free(gpu);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    return check_done("test_cuda_session");
}
