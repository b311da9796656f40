/* A batch's KV shards placed on simulated GPUs (router/shard_plan.h) and the
 * modeled step (bench/gpu_cost.h): cases worked by hand for EPLB, the equal
 * count and whole sequences on GPUs, every entry on exactly one GPU, the
 * exchange's bytes, the fixed costs within and across nodes, the given rest
 * of the step, bad arguments, and shard loads read from real compressed
 * caches (bench/shard_loads.h). */
#include "bench/gpu_cost.h"
#include "bench/shard_loads.h"
#include "check.h"
#include "router/shard_plan.h"

#include <math.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"

static int near(double a, double b) { return fabs(a - b) <= 1e-9 * (fabs(b) > 1 ? fabs(b) : 1); }

/* One layer of shards 300, 100, 100, 100 on two GPUs.
 *
 * Equal count: GPU 0 takes shards 0 and 1 (400 entries), GPU 1 shards 2 and 3
 * (200): max/mean 400 / 300. Each GPU produces 2 states and takes in the
 * other's 2.
 *
 * EPLB has 2 * (4 / 2 + 2) = 8 slots. The 4 extra replicas go each to the
 * largest load per replica: shard 0 (300 -> 150), shard 0 (150 -> 100),
 * shard 0 again on the four-way tie at 100 (-> 75), then shard 1 (-> 50).
 * Slot weights 75, 50, 100, 100, 75, 75, 75, 50 packed heaviest first onto the
 * lighter GPU (the lower on ties) give GPU 0 shard 2 and slices 75, 75, 50 of
 * shards 0 and 1 (300), GPU 1 the same with shard 3 (300): max/mean 1, shards
 * 0 and 1 split, three states on each GPU, each taking in the other's three. */
static void check_hand_layer(void)
{
    const int len[4] = {300, 100, 100, 100};
    pk_shard_plan eq, ep;
    CHECK(pk_shard_plan_make(len, 1, 4, 2, PK_PLACE_EQUAL_COUNT, &eq) == 0, "equal: %s", pikv_last_error());
    CHECK(eq.entries[0] == 400 && eq.entries[1] == 200, "equal entries %ld %ld", eq.entries[0], eq.entries[1]);
    CHECK(near(pk_shard_plan_imbalance(&eq), 400.0 / 300.0), "equal imbalance %.6f", pk_shard_plan_imbalance(&eq));
    CHECK(eq.partials[0] == 2 && eq.partials[1] == 2 && eq.slices == 4 && eq.split == 0,
          "equal: partials %ld %ld, slices %ld, split %ld", eq.partials[0], eq.partials[1], eq.slices, eq.split);
    CHECK(pk_shard_plan_make(len, 1, 4, 2, PK_PLACE_EPLB, &ep) == 0, "eplb: %s", pikv_last_error());
    CHECK(ep.entries[0] == 300 && ep.entries[1] == 300, "eplb entries %ld %ld", ep.entries[0], ep.entries[1]);
    CHECK(near(pk_shard_plan_imbalance(&ep), 1.0), "eplb imbalance %.6f", pk_shard_plan_imbalance(&ep));
    CHECK(ep.partials[0] == 3 && ep.partials[1] == 3 && ep.slices == 8 && ep.split == 2,
          "eplb: partials %ld %ld, slices %ld, split %ld", ep.partials[0], ep.partials[1], ep.slices, ep.split);

    /* The step at 1 GB/s of HBM (1,000 bytes a microsecond) and 1 GB/s of
     * NVLink, 5 us an all-gather, 260 bytes an entry, head_dim 64 (states of
     * 66 floats, 264 bytes), 1,000 bytes of weights (1 us). */
    const pk_gpu_links links = {.hbm_gbs = 1, .nvlink_gbs = 1, .ib_gbs = 1, .nvlink_us = 5, .ib_us = 50,
                                .gpus_per_node = 8};
    pk_gpu_cost c;
    CHECK(pk_partial_state_bytes(64) == 264, "state bytes %zu", pk_partial_state_bytes(64));
    CHECK(pk_gpu_cost_model(&eq, 260, 64, 1000, &links, &c) == 0, "equal cost: %s", pikv_last_error());
    CHECK(near(c.kv_bytes_max, 400 * 260) && near(c.kv_bytes_mean, 300 * 260), "equal bytes %g %g", c.kv_bytes_max,
          c.kv_bytes_mean);
    CHECK(near(c.exchange_bytes, 2 * 264) && near(c.kv_read_us, 104) && near(c.exchange_us, 5 + 0.528) &&
              near(c.weights_us, 1) && near(c.step_us, 1 + 104 + 5.528),
          "equal: exchange %g B, kv %g us, exchange %g us, step %g us", c.exchange_bytes, c.kv_read_us,
          c.exchange_us, c.step_us);
    CHECK(pk_gpu_cost_model(&ep, 260, 64, 1000, &links, &c) == 0, "eplb cost: %s", pikv_last_error());
    CHECK(near(c.kv_bytes_max, 300 * 260) && near(c.exchange_bytes, 3 * 264) && near(c.kv_read_us, 78) &&
              near(c.exchange_us, 5 + 0.792) && near(c.step_us, 1 + 78 + 5.792),
          "eplb: max %g B, exchange %g B, kv %g us, exchange %g us, step %g us", c.kv_bytes_max, c.exchange_bytes,
          c.kv_read_us, c.exchange_us, c.step_us);

    /* One GPU: no exchange, not even its fixed cost. */
    pk_shard_plan one;
    CHECK(pk_shard_plan_make(len, 1, 4, 1, PK_PLACE_EPLB, &one) == 0 && one.entries[0] == 600 && one.split == 0,
          "one GPU holds everything, splits nothing");
    CHECK(pk_gpu_cost_model(&one, 260, 64, 1000, &links, &c) == 0 && c.exchange_bytes == 0 && c.exchange_us == 0 &&
              near(c.step_us, 1 + 600 * 0.26),
          "one GPU: exchange %g B %g us, step %g us", c.exchange_bytes, c.exchange_us, c.step_us);
    pk_shard_plan_free(&one);
    pk_shard_plan_free(&eq);
    pk_shard_plan_free(&ep);
}

/* Two layers on 4 GPUs of 2 a node, so across nodes. Equal count, one shard
 * each: layer 0 (8, 8, 8, 8) is even, layer 1 (16, 0, 0, 0) has everything on
 * GPU 0, and its three empty shards send nothing. Imbalance (8 + 16) / (48 /
 * 4) = 2. Intake: layer 0 three states, layer 1 one state (the GPUs other
 * than GPU 0); at 2 GB/s and 7 us an all-gather: 2 * 7 + 4 * 264 / 2000 us. */
static void check_across_nodes(void)
{
    const int len[8] = {8, 8, 8, 8, 16, 0, 0, 0};
    pk_shard_plan eq;
    CHECK(pk_shard_plan_make(len, 2, 4, 4, PK_PLACE_EQUAL_COUNT, &eq) == 0, "equal: %s", pikv_last_error());
    CHECK(near(pk_shard_plan_imbalance(&eq), 2.0), "imbalance %.6f", pk_shard_plan_imbalance(&eq));
    CHECK(eq.partials[4] == 1 && eq.partials[5] == 0 && eq.partials[6] == 0 && eq.partials[7] == 0,
          "layer 1 partials %ld %ld %ld %ld", eq.partials[4], eq.partials[5], eq.partials[6], eq.partials[7]);
    CHECK(pk_shard_plan_gpu_entries(&eq, 0) == 24 && pk_shard_plan_gpu_entries(&eq, 3) == 8, "GPU entries %ld %ld",
          pk_shard_plan_gpu_entries(&eq, 0), pk_shard_plan_gpu_entries(&eq, 3));
    pk_gpu_links links = {.hbm_gbs = 1, .nvlink_gbs = 1000, .ib_gbs = 2, .nvlink_us = 1, .ib_us = 7,
                          .gpus_per_node = 2};
    pk_gpu_cost c;
    CHECK(pk_gpu_cost_model(&eq, 100, 64, 0, &links, &c) == 0, "cost: %s", pikv_last_error());
    CHECK(near(c.exchange_bytes, 4 * 264) && near(c.exchange_us, 14 + 4 * 264 / 2000.0) &&
              near(c.kv_read_us, (8 + 16) * 0.1),
          "across nodes: exchange %g B %g us, kv %g us", c.exchange_bytes, c.exchange_us, c.kv_read_us);
    /* The same four GPUs in one node use NVLink and its fixed cost. */
    links.gpus_per_node = 4;
    CHECK(pk_gpu_cost_model(&eq, 100, 64, 0, &links, &c) == 0 && near(c.exchange_us, 2 + 4 * 264 / 1e6),
          "one node: exchange %g us", c.exchange_us);
    pk_shard_plan_free(&eq);
}

/* Over uneven shards and many GPU counts: each GPU's entries add up to the
 * total, a layer's states are one per (GPU, shard) pair, so at least one per
 * shard and one more per split shard, and EPLB's balance is never worse than
 * the equal count's. */
static void check_invariants(void)
{
    enum { L = 3, N = 40 };
    int len[L * N];
    long total = 0, nonempty = 0;
    for (int i = 0; i < L * N; i++) {
        len[i] = i % 7 == 0 ? 2000 : i % 5 == 0 ? 0 : 320 + 13 * (i % 11);
        total += len[i];
        nonempty += len[i] > 0;
    }
    const int counts[] = {1, 2, 3, 8, 16, 40, 64};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++)
        for (int eplb = 0; eplb < 2; eplb++) {
            const int G = counts[k];
            pk_shard_plan p;
            if (pk_shard_plan_make(len, L, N, G, eplb ? PK_PLACE_EPLB : PK_PLACE_EQUAL_COUNT, &p)) {
                CHECK(0, "%d GPUs: %s", G, pikv_last_error());
                continue;
            }
            long held = 0, states = 0;
            for (int g = 0; g < G; g++) held += pk_shard_plan_gpu_entries(&p, g);
            for (int i = 0; i < L * G; i++) states += p.partials[i];
            CHECK(held == total, "%d GPUs, %s: %ld entries held of %ld", G, eplb ? "eplb" : "equal", held, total);
            CHECK(states >= nonempty + p.split, "%d GPUs: %ld states for %ld shards, %ld split", G, states, nonempty,
                  p.split);
            CHECK(G > 1 || (states == nonempty && p.split == 0), "one GPU: %ld states, %ld split", states, p.split);
            if (eplb) {
                pk_shard_plan q;
                CHECK(pk_shard_plan_make(len, L, N, G, PK_PLACE_EQUAL_COUNT, &q) == 0 &&
                          pk_shard_plan_imbalance(&p) <= pk_shard_plan_imbalance(&q) + 1e-12,
                      "%d GPUs: EPLB %.3f against equal %.3f", G, pk_shard_plan_imbalance(&p),
                      pk_shard_plan_imbalance(&q));
                pk_shard_plan_free(&q);
            }
            pk_shard_plan_free(&p);
        }
}

/* The rest of a step, as given, is paid once per step on every GPU, whatever
 * the placement. */
static void check_rest_of_step(void)
{
    const int len[4] = {300, 100, 100, 100};
    pk_shard_plan ep;
    CHECK(pk_shard_plan_make(len, 1, 4, 2, PK_PLACE_EPLB, &ep) == 0, "eplb: %s", pikv_last_error());
    const pk_gpu_links links = {.hbm_gbs = 1, .nvlink_gbs = 1, .ib_gbs = 1, .nvlink_us = 5, .ib_us = 50,
                                .gpus_per_node = 8, .rest_us = 40};
    pk_gpu_cost c;
    CHECK(pk_gpu_cost_model(&ep, 260, 64, 1000, &links, &c) == 0 && near(c.rest_us, 40) &&
              near(c.step_us, 1 + 78 + 5.792 + 40),
          "rest of the step: %g us, step %g us", c.rest_us, c.step_us);
    pk_shard_plan_free(&ep);
}

/* Whole sequences on GPUs. One layer, two heads, a batch of four in head-major
 * order: head 0 holds 100, 50, 30, 20 entries and head 1 100, 10, 10, 0, so the
 * sequences hold 200, 60, 40 and 20. Balanced packing, two a GPU, heaviest
 * first onto the lighter GPU (the lower on ties): 200 to GPU 0, 60 and 40 to
 * GPU 1, which is then full, 20 to GPU 0: 220 and 100 entries, max/mean
 * 220 / 160. At 1 GB/s, 260 bytes an entry, 1,000 bytes of weights and 7 us
 * for the rest: 1 + 57.2 + 7 us, no exchange.
 *
 * Three sequences (200, 60, 40) on two GPUs are packed with an empty fourth:
 * 200 and the empty one on GPU 0, 60 and 40 on GPU 1. Two sequences on four
 * GPUs leave two GPUs idle and the busiest holds the heavier sequence. */
static void check_by_sequence(void)
{
    const int len[8] = {100, 50, 30, 20, 100, 10, 10, 0};
    const pk_gpu_links links = {.hbm_gbs = 1, .nvlink_gbs = 1, .ib_gbs = 1, .nvlink_us = 5, .ib_us = 50,
                                .gpus_per_node = 8, .rest_us = 7};
    pk_gpu_result r;
    CHECK(pk_gpu_by_sequence(len, 1, 2, 4, 2, 260, 1000, &links, &r) == 0, "by sequence: %s", pikv_last_error());
    CHECK(near(r.cost.kv_bytes_max, 220 * 260) && near(r.cost.kv_bytes_mean, 160 * 260) &&
              near(r.imbalance, 220.0 / 160.0) && r.slices == 4 && r.split == 0,
          "four on two: max %g B, mean %g B, imbalance %.6f, slices %ld, split %ld", r.cost.kv_bytes_max,
          r.cost.kv_bytes_mean, r.imbalance, r.slices, r.split);
    CHECK(near(r.cost.kv_read_us, 57.2) && r.cost.exchange_us == 0 && r.cost.exchange_bytes == 0 &&
              near(r.cost.step_us, 1 + 57.2 + 7),
          "four on two: kv %g us, exchange %g us, step %g us", r.cost.kv_read_us, r.cost.exchange_us, r.cost.step_us);
    /* Sequences 0..2 of a batch of three: the same heads without the last sequence. */
    const int three[6] = {100, 50, 30, 100, 10, 10};
    CHECK(pk_gpu_by_sequence(three, 1, 2, 3, 2, 260, 1000, &links, &r) == 0 && near(r.cost.kv_bytes_max, 200 * 260) &&
              near(r.imbalance, 200.0 / 150.0),
          "three on two: max %g B, imbalance %.6f", r.cost.kv_bytes_max, r.imbalance);
    const int two[4] = {100, 50, 100, 10};
    CHECK(pk_gpu_by_sequence(two, 1, 2, 2, 4, 260, 0, &links, &r) == 0 && near(r.cost.kv_bytes_max, 200 * 260) &&
              near(r.imbalance, 200.0 / 65.0) && near(r.cost.step_us, 52 + 7),
          "two on four: max %g B, imbalance %.6f, step %g us", r.cost.kv_bytes_max, r.imbalance, r.cost.step_us);
    /* One GPU holds the whole batch: the same KV read as one GPU's shard plan. */
    pk_shard_plan one;
    pk_gpu_cost c;
    CHECK(pk_shard_plan_make(len, 1, 8, 1, PK_PLACE_EPLB, &one) == 0 &&
              pk_gpu_cost_model(&one, 260, 64, 1000, &links, &c) == 0 &&
              pk_gpu_by_sequence(len, 1, 2, 4, 1, 260, 1000, &links, &r) == 0 && near(r.cost.step_us, c.step_us),
          "one GPU: %g us by sequence against %g us", r.cost.step_us, c.step_us);
    pk_shard_plan_free(&one);
}

static void check_errors(void)
{
    const int len[2] = {5, -1}, ok[2] = {5, 6};
    pk_shard_plan p;
    CHECK(pk_shard_plan_make(ok, 1, 2, 0, PK_PLACE_EPLB, &p) != 0 && strstr(pikv_last_error(), "0 GPUs"),
          "zero GPUs: %s", pikv_last_error());
    CHECK(pk_shard_plan_make(len, 1, 2, 2, PK_PLACE_EPLB, &p) != 0 && strstr(pikv_last_error(), "-1 entries"),
          "negative length: %s", pikv_last_error());
    CHECK(pk_shard_plan_make(ok, 1, 2, 2, PK_PLACE_EPLB, &p) == 0, "a good plan");
    pk_gpu_cost c;
    pk_gpu_links links = {.hbm_gbs = 0, .nvlink_gbs = 1, .ib_gbs = 1, .gpus_per_node = 8};
    CHECK(pk_gpu_cost_model(&p, 260, 64, 0, &links, &c) != 0 && strstr(pikv_last_error(), "HBM"),
          "zero HBM bandwidth: %s", pikv_last_error());
    links.hbm_gbs = 1, links.ib_us = -1;
    CHECK(pk_gpu_cost_model(&p, 260, 64, 0, &links, &c) != 0 && strstr(pikv_last_error(), "fixed cost"),
          "negative fixed cost: %s", pikv_last_error());
    links.ib_us = 0, links.rest_us = -2;
    CHECK(pk_gpu_cost_model(&p, 260, 64, 0, &links, &c) != 0 && strstr(pikv_last_error(), "rest of a step"),
          "negative rest of the step: %s", pikv_last_error());
    pk_gpu_result r;
    CHECK(pk_gpu_by_sequence(ok, 1, 1, 2, 2, 260, 0, &links, &r) != 0 && strstr(pikv_last_error(), "rest of a step"),
          "by sequence, negative rest of the step: %s", pikv_last_error());
    links.rest_us = 0;
    CHECK(pk_gpu_by_sequence(ok, 1, 1, 2, 0, 260, 0, &links, &r) != 0 && strstr(pikv_last_error(), "on 0 GPUs"),
          "by sequence on no GPU: %s", pikv_last_error());
    CHECK(pk_gpu_by_sequence(len, 1, 1, 2, 2, 260, 0, &links, &r) != 0 && strstr(pikv_last_error(), "-1 entries"),
          "by sequence, a negative length: %s", pikv_last_error());
    links.gpus_per_node = 0;
    CHECK(pk_gpu_cost_model(&p, 260, 64, 0, &links, &c) != 0, "no GPU a node");
    pk_shard_plan_free(&p);
}

/* Two measured sequences of one layer, two heads, (10, 20) and (30, 40), make
 * a batch of three in head-major order. */
static void check_batch_layout(void)
{
    const int len[4] = {10, 20, 30, 40};
    int out[6];
    pk_batch_shards(len, 2, 1, 2, 3, out);
    const int want[6] = {10, 30, 10, 20, 40, 20};
    CHECK(memcmp(out, want, sizeof want) == 0, "batch %d %d %d %d %d %d", out[0], out[1], out[2], out[3], out[4],
          out[5]);
}

/* Shard loads of real caches: every head keeps the whole context without a
 * press; DuoAttention at 0.75 streams 27 of the 36 heads (a sink and a recent
 * window, the same for every context) and keeps 9 whole. An f16 entry of 64
 * values is 2 * 128 bytes of rows and a 4-byte position. */
static void check_measured(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    pk_haystack h;
    if (!m || !tok || pk_haystack_load(&h, tok, "data/haystack.txt")) {
        CHECK(0, "setup: %s", pikv_last_error());
        return;
    }
    const pikv_config *c = pikv_model_config(m);
    const int per_seq = c->n_layer * c->n_head, T = 600;
    pikv_session_params params = pikv_session_default_params();
    params.n_threads = 2;
    params.kv_type_k = params.kv_type_v = PIKV_KV_F16;
    pikv_session *s = pikv_session_new_with_params(m, &params);
    pikv_press *duo = pikv_press_new("duo:0.75", m, MODEL);
    int *len = malloc(2 * (size_t)per_seq * sizeof *len);
    CHECK(pk_session_entry_bytes(s) == 260, "f16 entry bytes %zu", pk_session_entry_bytes(s));
    CHECK(pk_measure_head_lens(s, NULL, &h, 2, T, 1, NULL, NULL, len) == 0, "none: %s", pikv_last_error());
    int whole = 0;
    for (int i = 0; i < 2 * per_seq; i++) whole += len[i] == T;
    CHECK(whole == 2 * per_seq, "no press: %d of %d heads whole", whole, 2 * per_seq);
    CHECK(pk_measure_head_lens(s, duo, &h, 2, T, 1, NULL, NULL, len) == 0, "duo: %s", pikv_last_error());
    whole = 0;
    int streaming_ok = 1;
    for (int i = 0; i < per_seq; i++) {
        whole += len[i] == T;
        streaming_ok &= len[i] == T || (len[i] > 0 && len[i] < T);
    }
    CHECK(whole == 9 && streaming_ok, "duo:0.75: %d whole heads of %d", whole, per_seq);
    CHECK(memcmp(len, len + per_seq, (size_t)per_seq * sizeof *len) == 0, "duo's lengths differ between contexts");
    CHECK(pikv_session_kv_len(s, 0, 0) == 0, "the session is left empty");
    CHECK(pk_measure_head_lens(s, duo, &h, 1, c->n_positions + 1, 1, NULL, NULL, len) != 0,
          "a context past n_positions is an error");
    free(len);
    pikv_press_free(duo);
    pikv_session_free(s);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
}

int main(void)
{
    check_hand_layer();
    check_across_nodes();
    check_invariants();
    check_rest_of_step();
    check_by_sequence();
    check_errors();
    check_batch_layout();
    check_measured();
    return check_done("shard_plan");
}
