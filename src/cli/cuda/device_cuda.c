#include "cli/cuda/device_cuda.h"
#include "backend/cuda/engine.h"
#include "bench/stats.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

/* The device type of a --weights value (already checked by cli_load). */
static pk_cuda_dtype device_type(const char *weights)
{
    if (weights && strcmp(weights, "f32") == 0) return PK_CUDA_F32;
    if (weights && strcmp(weights, "f16") == 0) return PK_CUDA_F16;
    return PK_CUDA_BF16;
}

static const char *device_type_name(pk_cuda_dtype t)
{
    return t == PK_CUDA_F32 ? "f32" : t == PK_CUDA_F16 ? "f16" : "bf16";
}

static int greedy_id(float *logits, int n)
{
    static const pikv_sampling greedy = {.greedy = 1};
    return pikv_sample(logits, n, &greedy, NULL);
}

int cli_cuda_generate(const cli_command *cmd, const pikv_model *m, const char *weights, const int32_t *prompt,
                      int n_prompt, int max_new, int stop_id, cli_cuda_generation *out)
{
    memset(out, 0, sizeof *out);
    const int V = pikv_model_config(m)->vocab_size;
    const pk_cuda_params params = {.dtype = device_type(weights), .max_seq = 1, .use_graphs = 1};
    pk_cuda_session *s = pk_cuda_session_new(m, &params);
    float *logits = pk_malloc_array((size_t)V, sizeof *logits, "logits");
    out->ids = pk_malloc_array((size_t)(max_new > 0 ? max_new : 1), sizeof *out->ids, "generated ids");
    int rc = s && logits && out->ids ? 0 : -1;
    double t0 = pikv_now();
    if (rc == 0 && max_new > 0) rc = pk_cuda_forward(s, 0, prompt, n_prompt, logits, 0);
    double t1 = pikv_now();
    for (int i = 0; rc == 0 && i < max_new; i++) {
        const int32_t id = greedy_id(logits, V);
        out->ids[out->n_ids++] = id;
        if (id == stop_id || i + 1 == max_new) break;
        rc = pk_cuda_decode(s, &id, 1, logits);
    }
    out->prefill_s = t1 - t0;
    out->decode_s = pikv_now() - t1;
    if (s) {
        pk_cuda_stats st;
        pk_cuda_get_stats(s, &st);
        out->kv_bytes = st.kv_bytes_in_use;
    }
    if (rc) {
        cli_fail(cmd);
        pikv_free(out->ids);
        out->ids = NULL;
        out->n_ids = 0;
    }
    pk_free(logits);
    pk_cuda_session_free(s);
    return rc ? 1 : 0;
}

/* One repetition: every sequence cut back to empty and prefilled, then n_gen
 * decode steps of all of them; tokens/s of each phase. */
static int bench_once(pk_cuda_session *s, const cli_cuda_bench_options *o, const int32_t *prompt, int V,
                      float *logits, int32_t *next, double *prefill_tok_s, double *decode_tok_s)
{
    double t_pre = 0;
    for (int b = 0; b < o->batch; b++) {
        if (pk_cuda_truncate(s, b, 0)) return -1;
        double t0 = pikv_now();
        if (pk_cuda_forward(s, b, prompt, o->n_prompt, logits + (size_t)b * V, 0)) return -1;
        t_pre += pikv_now() - t0;
        next[b] = greedy_id(logits + (size_t)b * V, V);
    }
    double t0 = pikv_now();
    for (int i = 0; i < o->n_gen; i++) {
        if (pk_cuda_decode(s, next, o->batch, logits)) return -1;
        for (int b = 0; b < o->batch; b++) next[b] = greedy_id(logits + (size_t)b * V, V);
    }
    *prefill_tok_s = (double)o->batch * o->n_prompt / t_pre;
    *decode_tok_s = (double)o->batch * o->n_gen / (pikv_now() - t0);
    return 0;
}

/* The figures of a finished run, with the floor of a decode step: the
 * weights and the KV entries it reads (at the decode's mean context) over the
 * copy bandwidth measured on the device. */
static void print_report(const pk_cuda_session *s, const pikv_config *c, const char *dir,
                         const cli_cuda_bench_options *o, pk_cuda_dtype t, double bw, const pk_summary *pre,
                         const pk_summary *dec, double replay_us)
{
    pk_cuda_stats st;
    pk_cuda_get_stats(s, &st);
    const double ctx = o->n_prompt + o->n_gen / 2.0;
    const double kv_step = (double)o->batch * ctx * c->n_layer * c->n_head * 2.0 * c->head_dim * (t == PK_CUDA_F32 ? 4 : 2);
    const double step_bytes = (double)st.weight_bytes + kv_step, floor_tps = bw / step_bytes * o->batch;
    printf("model %s, %s, batch %d: weights %.1f MB on the device, KV pool %.1f MB (blocks of %zu bytes)\n", dir,
           device_type_name(t), o->batch, st.weight_bytes / 1e6, st.pool_bytes / 1e6, st.block_bytes);
    printf("prefill %d tokens: %.0f tok/s median (%.0f..%.0f), %.2f ms\n", o->n_prompt, pre->median, pre->min,
           pre->max, 1e3 * o->batch * o->n_prompt / pre->median);
    printf("decode %d tokens after %d: %.0f tok/s median (%.0f..%.0f) over %d runs, %s\n", o->n_gen, o->n_prompt,
           dec->median, dec->min, dec->max, o->reps, o->graphs ? "graph replay" : "plain launches");
    if (replay_us > 0)
        printf("graph replay: %.1f us per step (%.0f tok/s on the device alone); %d kernel launches per step\n",
               replay_us, 1e6 * o->batch / replay_us, st.kernels_per_decode);
    printf("floor: %.1f MB per step (weights %.1f + KV %.1f) / %.2f TB/s = %.0f tok/s; decode reaches %.0f%%\n",
           step_bytes / 1e6, st.weight_bytes / 1e6, kv_step / 1e6, bw / 1e12, floor_tps, 100.0 * dec->median / floor_tps);
    printf("KV in use %.1f MB, high-water %.1f MB\n", st.kv_bytes_in_use / 1e6, st.kv_high_water / 1e6);
}

/* Replays of 64 steps start from the prompt again, so that they fit where the decode did. */
enum { REPLAY_STEPS = 64 };

int cli_cuda_bench(const cli_command *cmd, const pikv_model *m, const char *dir, const cli_cuda_bench_options *o)
{
    const pikv_config *c = pikv_model_config(m);
    if (o->graphs && o->n_prompt + REPLAY_STEPS > c->n_positions)
        return cli_error(cmd, "-p %d: timing %d replayed steps after the prompt passes the model's %d positions",
                         o->n_prompt, REPLAY_STEPS, c->n_positions);
    const pk_cuda_dtype t = device_type(o->weights);
    const pk_cuda_params params = {.dtype = t, .max_seq = o->batch, .use_graphs = o->graphs};
    pk_cuda_session *s = pk_cuda_session_new(m, &params);
    if (!s) return cli_fail(cmd);
    char dev[256] = "";
    pk_cuda_describe(dev, sizeof dev);
    const double bw = pk_cuda_copy_bandwidth();
    printf("device: %s; copy bandwidth %.2f TB/s (read + write)\n", dev, bw / 1e12);

    const int V = c->vocab_size;
    int32_t *prompt = pk_malloc_array((size_t)o->n_prompt, sizeof *prompt, "prompt");
    int32_t *next = pk_malloc_array((size_t)o->batch, sizeof *next, "next tokens");
    float *logits = pk_malloc_array((size_t)o->batch * V, sizeof *logits, "logits");
    double *pre = pk_malloc_array((size_t)o->reps, sizeof *pre, "timings");
    double *dec = pk_malloc_array((size_t)o->reps, sizeof *dec, "timings");
    int rc = prompt && next && logits && pre && dec ? 0 : -1;
    uint64_t rng = 1;
    for (int i = 0; rc == 0 && i < o->n_prompt; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = 1 + (int32_t)((rng >> 33) % (uint64_t)(V - 1));
    }
    /* One warm-up repetition (module load, graph capture, cuBLAS heuristics), then the timed ones. */
    double warm_pre, warm_dec;
    if (rc == 0) rc = bench_once(s, o, prompt, V, logits, next, &warm_pre, &warm_dec);
    for (int r = 0; rc == 0 && r < o->reps; r++) rc = bench_once(s, o, prompt, V, logits, next, &pre[r], &dec[r]);
    double replay_us = -1;
    for (int b = 0; rc == 0 && o->graphs && b < o->batch; b++) rc = pk_cuda_truncate(s, b, o->n_prompt);
    if (rc == 0 && o->graphs) rc = pk_cuda_time_replay(s, o->batch, REPLAY_STEPS, &replay_us);
    if (rc == 0) {
        const pk_summary ps = pk_summarize(pre, o->reps), ds = pk_summarize(dec, o->reps);
        print_report(s, c, dir, o, t, bw, &ps, &ds, replay_us);
    } else {
        cli_fail(cmd);
    }
    pk_free(prompt);
    pk_free(next);
    pk_free(logits);
    pk_free(pre);
    pk_free(dec);
    pk_cuda_session_free(s);
    return rc ? 1 : 0;
}
