#include "cli/cuda/device_cuda.h"
#include "backend/cuda/engine.h"
#include "bench/stats.h"
#include "engine/cuda/capacity_cuda.h"
#include "engine/cuda/group_cuda.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

/* The device type of a --weights value (pk_cuda_dtype_for). */
static int device_type(const cli_command *cmd, const char *weights, pk_cuda_dtype *out)
{
    pikv_weight_type t = PIKV_WEIGHTS_AS_STORED;
    if (weights && cli_parse_weights(cmd, weights, &t)) return 1;
    *out = pk_cuda_dtype_for(t);
    return 0;
}

static const char *device_type_name(pk_cuda_dtype t)
{
    return t == PK_CUDA_F32 ? "f32" : t == PK_CUDA_F16 ? "f16" : "bf16";
}

/* The line that says how a press ran on the GPU. */
static void print_press_line(FILE *f, const char *spec, const pk_cuda_press_stats *st)
{
    fprintf(f, "press %s: %s (%.2f MB), applied on the GPU; KV %.2f -> %.2f MB, compression %.1f ms\n", spec,
            pk_cuda_press_how(st->mode), st->bytes_to_host / 1e6, st->kv_bytes_before / 1e6, st->kv_bytes_after / 1e6,
            1e3 * st->compression_s);
}

/* What one repetition measured. */
typedef struct {
    double prefill_tok_s, decode_tok_s;
    pk_cuda_press_stats press;   /* of the last sequence */
    size_t kv_in_use;            /* KV bytes held after the last decode step */
} bench_result;

/* One repetition (pk_cuda_run_batch): tokens/s of each phase, the
 * prefill's without the compression. */
static int bench_once(pk_cuda_session *s, const pikv_model *m, const cli_cuda_bench_options *o, int batch,
                      const int32_t *prompt, bench_result *r)
{
    pk_cuda_batch_run run;
    if (pk_cuda_run_batch(s, m, prompt, o->n_prompt, o->press, batch, o->n_gen, &run)) return -1;
    r->press = run.press;
    r->prefill_tok_s = (double)batch * o->n_prompt / run.prefill_s;
    r->decode_tok_s = o->n_gen > 0 ? (double)batch * o->n_gen / run.decode_s : 0;
    r->kv_in_use = run.kv_in_use;
    return 0;
}

/* A press that acts while decoding (decoding(...)) runs each step through
 * the press on the host, and one that routes queries (route=1) stops each
 * step at every layer to route them there, rather than replaying a graph. */
static int steps_on_host(const cli_cuda_bench_options *o)
{
    return o->press && (pikv_press_acts_while_generating(o->press) == 1 || pikv_press_routes_queries(o->press) == 1);
}

static const char *decode_mode(const cli_cuda_bench_options *o)
{
    if (o->press && pikv_press_routes_queries(o->press) == 1)
        return "each step's queries routed on the host, layer by layer";
    return steps_on_host(o) ? "each step's queries to the press on the host" : o->graphs ? "graph replay"
                                                                                           : "plain launches";
}

/* The figures of a finished run, with the floor of a decode step: the
 * weights it reads (all but the position embeddings, of which a row a
 * sequence) and the KV blocks it reads (those held after the last step) over
 * the copy bandwidth measured on the device. */
static void print_report(const pk_cuda_session *s, const char *dir, const cli_cuda_bench_options *o, int batch,
                         pk_cuda_dtype t, double bw, const pk_summary *pre, const pk_summary *dec, double replay_us,
                         const bench_result *last)
{
    pk_cuda_stats st;
    pk_cuda_get_stats(s, &st);
    const double kv_step = (double)last->kv_in_use;
    const double weights_step =
        (double)(st.weight_bytes - st.position_bytes) + (double)batch * (double)st.position_row_bytes;
    const double step_bytes = weights_step + kv_step, floor_tps = bw / step_bytes * batch;
    printf("model %s, %s, batch %d: weights %.1f MB on the device, KV pool %.1f MB (blocks of %zu bytes)\n", dir,
           device_type_name(t), batch, st.weight_bytes / 1e6, st.pool_bytes / 1e6, st.block_bytes);
    if (o->press) print_press_line(stdout, o->press_spec, &last->press);
    printf("prefill %d tokens: %.0f tok/s median (%.0f..%.0f), %.2f ms\n", o->n_prompt, pre->median, pre->min,
           pre->max, 1e3 * batch * o->n_prompt / pre->median);
    printf("decode %d tokens after %d: %.0f tok/s median (%.0f..%.0f) over %d runs, %s; %.1f tok/s per sequence\n",
           o->n_gen, o->n_prompt, dec->median, dec->min, dec->max, o->reps, decode_mode(o),
           dec->median / batch);
    if (replay_us > 0)
        printf("graph replay: %.1f us per step (%.0f tok/s on the device alone); %d kernel launches per step\n",
               replay_us, 1e6 * batch / replay_us, st.kernels_per_decode);
    printf("floor: %.1f MB per step (weights %.1f + KV %.1f) / %.2f TB/s = %.0f tok/s; decode reaches %.0f%%\n",
           step_bytes / 1e6, weights_step / 1e6, kv_step / 1e6, bw / 1e12, floor_tps, 100.0 * dec->median / floor_tps);
    printf("KV in use after decoding %.1f MB (%.2f MB per sequence), high-water %.1f MB\n", last->kv_in_use / 1e6,
           last->kv_in_use / 1e6 / batch, st.kv_high_water / 1e6);
}

/* Replays of 64 steps start from the prompt again, so that they fit where the decode did. */
enum { REPLAY_STEPS = 64, MAX_CAPACITY_SEQ = 4096 };

/* Capacity mode: the batch that fits o->kv_budget and the pool that runs it,
 * planned on a probe session. Prints the plan. */
static int plan_capacity(const cli_command *cmd, const pikv_model *m, const cli_cuda_bench_options *o, pk_cuda_dtype t,
                         const int32_t *prompt, int *batch, long *pool_blocks)
{
    const pk_cuda_params probe_params = {.dtype = t, .max_seq = 1, .use_graphs = 0};
    pk_cuda_session *probe = pk_cuda_session_new(m, &probe_params);
    pk_cuda_capacity cap;
    int rc = probe ? pk_cuda_plan_capacity(probe, m, prompt, o->n_prompt, o->press, o->n_gen, o->kv_budget, &cap) : -1;
    pk_cuda_session_free(probe);
    if (rc) return cli_fail(cmd);
    if (cap.admitted < 1)
        return cli_error(cmd, "--kv-budget: %zu bytes hold no sequence of %.2f MB (%d + %d tokens, %s)", o->kv_budget,
                         cap.per_seq_bytes / 1e6, o->n_prompt, o->n_gen, o->press_spec);
    *batch = cap.admitted < MAX_CAPACITY_SEQ ? cap.admitted : MAX_CAPACITY_SEQ;
    *pool_blocks = (long)((cap.budget_bytes + cap.headroom_bytes) / cap.block_bytes);
    printf("capacity at a KV budget of %.3f GiB, press %s: %.3f MB per sequence of %d + %d tokens (the pool's blocks "
           "after the press and the decode), %d sequences admitted = floor(budget / per sequence)%s; pool = budget + "
           "%.1f MB headroom for one prompt prefilled whole before its press\n",
           cap.budget_bytes / (double)(1 << 30), o->press_spec, cap.per_seq_bytes / 1e6, o->n_prompt, o->n_gen,
           cap.admitted, cap.admitted > MAX_CAPACITY_SEQ ? " (run with the first 4096)" : "", cap.headroom_bytes / 1e6);
    return 0;
}

/* One repetition on a group: a fresh group (placement is once per group),
 * every prompt prefilled and pressed on every GPU, the caches placed, then
 * the greedy decode timed. The report of the placement goes to *rep. */
static int group_once(const pikv_model *m, const cli_cuda_bench_options *o, const pk_cuda_group_params *gp,
                      const int32_t *prompt, int32_t *chosen, pk_cuda_group_report *rep, double *decode_tok_s)
{
    const int batch = gp->session.max_seq;
    pk_cuda_group *g = pk_cuda_group_new(m, gp);
    int rc = g ? 0 : -1;
    for (int b = 0; rc == 0 && b < batch; b++) rc = pk_cuda_group_prefill(g, b, prompt, o->n_prompt, o->press, NULL);
    if (rc == 0) rc = pk_cuda_group_place(g, batch, rep);
    int32_t *first = pk_malloc_array((size_t)batch, sizeof *first, "first tokens");
    if (rc == 0 && !first) rc = -1;
    for (int b = 0; rc == 0 && b < batch; b++) first[b] = prompt[o->n_prompt - 1];
    const double t0 = pikv_now();
    if (rc == 0) rc = pk_cuda_group_decode_greedy_steps(g, first, batch, o->n_gen, chosen);
    *decode_tok_s = (double)batch * o->n_gen / (pikv_now() - t0);
    pk_free(first);
    pk_cuda_group_free(g);
    return rc;
}

/* The group's runs interleaved with one GPU's (its own session, the step
 * replayed from a graph as bench does without --gpus), so that the ratio
 * comes from one run of the machine. */
static int bench_group(const cli_command *cmd, const pikv_model *m, const cli_cuda_bench_options *o, pk_cuda_dtype t,
                       const int32_t *prompt)
{
    const int batch = o->batch;
    const pk_cuda_group_params gp = {.n_gpu = o->gpus, .one_device = o->same_gpu,
                                     .session = {.dtype = t, .max_seq = batch}, .policy = PK_PLACE_EPLB};
    const pk_cuda_params one_params = {.dtype = t, .max_seq = batch, .use_graphs = 1};
    pk_cuda_session *one = pk_cuda_session_new(m, &one_params);
    int32_t *chosen = pk_malloc_array((size_t)o->n_gen * batch, sizeof *chosen, "choices");
    double *dec = pk_malloc_array((size_t)o->reps, sizeof *dec, "timings");
    double *dec_one = pk_malloc_array((size_t)o->reps, sizeof *dec_one, "timings");
    pk_cuda_group_report rep;
    bench_result alone;
    double warm;
    /* A warm-up of each, then the timed runs, alternating. */
    int rc = one && chosen && dec && dec_one ? group_once(m, o, &gp, prompt, chosen, &rep, &warm) : -1;
    if (rc == 0) rc = pk_cuda_use_device(0) || bench_once(one, m, o, batch, prompt, &alone);
    for (int i = 0; rc == 0 && i < o->reps; i++) {
        rc = group_once(m, o, &gp, prompt, chosen, &rep, &dec[i]);
        if (rc == 0) rc = pk_cuda_use_device(0) || bench_once(one, m, o, batch, prompt, &alone);
        dec_one[i] = alone.decode_tok_s;
    }
    if (rc == 0) {
        const pk_summary ds = pk_summarize(dec, o->reps), d1 = pk_summarize(dec_one, o->reps);
        printf("%d GPUs (%s), %s, batch %d, press %s: caches placed by DeepSeek's EPLB, a ring whole on one GPU\n",
               o->gpus, o->same_gpu ? "every rank on GPU 0, host-ordered copies: checks the merge, not a speed"
                                    : "NCCL all-gather of the attention states, one per layer",
               device_type_name(t), batch, o->press_spec);
        for (int r = 0; r < rep.n_gpu; r++)
            printf("GPU rank %d: %ld KV entries, %.2f MB of KV blocks\n", r, rep.entries[r], rep.kv_bytes[r] / 1e6);
        printf("load max/mean: %.3f with EPLB, %.3f with an equal count of heads per GPU; %ld caches cut over GPUs\n",
               rep.imbalance, rep.equal_imbalance, rep.split_shards);
        printf("decode %d tokens after %d: %.0f tok/s median (%.0f..%.0f) over %d runs, plain launches; %.1f tok/s per "
               "sequence\n",
               o->n_gen, o->n_prompt, ds.median, ds.min, ds.max, o->reps, ds.median / batch);
        printf("one GPU, interleaved: %.0f tok/s median (%.0f..%.0f), graph replay; %d GPUs / one = %.2fx\n", d1.median,
               d1.min, d1.max, o->gpus, ds.median / d1.median);
    } else {
        cli_fail(cmd);
    }
    pk_cuda_session_free(one);
    pk_free(chosen);
    pk_free(dec);
    pk_free(dec_one);
    return rc ? 1 : 0;
}

int cli_cuda_bench(const cli_command *cmd, const pikv_model *m, const char *dir, const cli_cuda_bench_options *o)
{
    const pikv_config *c = pikv_model_config(m);
    if (o->graphs && o->n_prompt + REPLAY_STEPS > c->n_positions)
        return cli_error(cmd, "-p %d: timing %d replayed steps after the prompt passes the model's %d positions",
                         o->n_prompt, REPLAY_STEPS, c->n_positions);
    pk_cuda_dtype t;
    if (device_type(cmd, o->weights, &t)) return 1;
    char dev[256] = "";
    pk_cuda_describe(dev, sizeof dev);
    const double bw = pk_cuda_copy_bandwidth();
    printf("device: %s; copy bandwidth %.2f TB/s (read + write)\n", dev, bw / 1e12);

    const int V = c->vocab_size;
    int32_t *prompt = pk_malloc_array((size_t)o->n_prompt, sizeof *prompt, "prompt");
    if (!prompt) return cli_fail(cmd);
    uint64_t rng = 1;
    for (int i = 0; i < o->n_prompt; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = 1 + (int32_t)((rng >> 33) % (uint64_t)(V - 1));
    }
    if (o->gpus) {
        const int rc = bench_group(cmd, m, o, t, prompt);
        pk_free(prompt);
        return rc;
    }
    int batch = o->batch;
    long pool_blocks = 0;
    if (o->kv_budget && plan_capacity(cmd, m, o, t, prompt, &batch, &pool_blocks)) {
        pk_free(prompt);
        return 1;
    }
    const pk_cuda_params params = {.dtype = t, .max_seq = batch, .pool_blocks = pool_blocks, .use_graphs = o->graphs};
    pk_cuda_session *s = pk_cuda_session_new(m, &params);
    double *pre = pk_malloc_array((size_t)o->reps, sizeof *pre, "timings");
    double *dec = pk_malloc_array((size_t)o->reps, sizeof *dec, "timings");
    int rc = s && pre && dec ? 0 : -1;
    /* One warm-up repetition (module load, graph capture, cuBLAS heuristics), then the timed ones. */
    bench_result r;
    if (rc == 0) rc = bench_once(s, m, o, batch, prompt, &r);
    for (int i = 0; rc == 0 && i < o->reps; i++) {
        rc = bench_once(s, m, o, batch, prompt, &r);
        pre[i] = r.prefill_tok_s;
        dec[i] = r.decode_tok_s;
    }
    /* Replay from where the prompts ended: prefill (and compress) again. */
    double replay_us = -1;
    if (rc == 0 && o->graphs && !steps_on_host(o)) {
        const cli_cuda_bench_options replay = {.n_prompt = o->n_prompt, .n_gen = 0, .press = o->press};
        bench_result ignored;
        rc = bench_once(s, m, &replay, batch, prompt, &ignored);
        if (rc == 0) rc = pk_cuda_time_replay(s, batch, REPLAY_STEPS, &replay_us);
    }
    if (rc == 0) {
        const pk_summary ps = pk_summarize(pre, o->reps), ds = pk_summarize(dec, o->reps);
        print_report(s, dir, o, batch, t, bw, &ps, &ds, replay_us, &r);
    } else {
        cli_fail(cmd);
    }
    pk_free(prompt);
    pk_free(pre);
    pk_free(dec);
    pk_cuda_session_free(s);
    return rc ? 1 : 0;
}
