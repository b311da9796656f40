/* pikv-cuda-bench: prefill and decode speed of the CUDA engine on one model.
 *
 *   pikv-cuda-bench MODEL_DIR [-t bf16|f16|f32] [-p PROMPT] [-n NEW] [-b BATCH] [-r REPS] [--no-graphs]
 *
 * Each repetition cuts every sequence back to empty, prefills a PROMPT-token
 * prompt of random ids into each, then decodes NEW tokens greedily for all of
 * them together (logits copied to the host every step). Prints medians with
 * min..max, the device time of one replayed decode graph, launches per step,
 * and the bandwidth floor: (weight bytes + KV bytes read per step) over the
 * measured device copy bandwidth. */
#include "backend/cuda/engine.h"
#include "bench/stats.h"
#include "pikv.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(const char *msg)
{
    fprintf(stderr, "pikv-cuda-bench: %s\nusage: pikv-cuda-bench MODEL_DIR [-t bf16|f16|f32] [-p PROMPT] [-n NEW] "
                    "[-b BATCH] [-r REPS] [--no-graphs]\n", msg);
    return 2;
}

/* The greedy choice, as generation makes it. */
static int argmax(float *x, int n)
{
    static const pikv_sampling greedy = {.greedy = 1};
    return pikv_sample(x, n, &greedy, NULL);
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *type = "bf16";
    int prompt = 1000, n_new = 128, batch = 1, reps = 5, graphs = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--no-graphs")) graphs = 0;
        else if (!strcmp(a, "-t") && has_value) type = argv[++i];
        else if (!strcmp(a, "-p") && has_value) prompt = atoi(argv[++i]);
        else if (!strcmp(a, "-n") && has_value) n_new = atoi(argv[++i]);
        else if (!strcmp(a, "-b") && has_value) batch = atoi(argv[++i]);
        else if (!strcmp(a, "-r") && has_value) reps = atoi(argv[++i]);
        else if (a[0] != '-' && !dir) dir = a;
        else return usage("unknown argument or missing value");
    }
    if (!dir) return usage("no model directory");
    pk_cuda_dtype t = !strcmp(type, "bf16") ? PK_CUDA_BF16 : !strcmp(type, "f16") ? PK_CUDA_F16
                      : !strcmp(type, "f32") ? PK_CUDA_F32 : (pk_cuda_dtype)-1;
    if ((int)t < 0) return usage("-t: expected bf16, f16 or f32");
    if (prompt < 1 || n_new < 2 || batch < 1 || batch > 64 || reps < 1 || reps > 100)
        return usage("-p >= 1, -n >= 2, -b 1..64, -r 1..100");
    if (!pk_cuda_available()) {
        fprintf(stderr, "pikv-cuda-bench: %s\n", pikv_last_error());
        return 1;
    }
    pikv_model *m = pikv_model_load(dir);
    if (!m) {
        fprintf(stderr, "pikv-cuda-bench: %s\n", pikv_last_error());
        return 1;
    }
    const pikv_config *c = pikv_model_config(m);
    /* As the transformers comparison does: keep the whole run inside n_positions. */
    if (prompt + n_new + 8 > c->n_positions) prompt = c->n_positions - n_new - 8;
    pk_cuda_params params = {.dtype = t, .max_seq = batch, .use_graphs = graphs};
    pk_cuda_session *s = pk_cuda_session_new(m, &params);
    if (!s) {
        fprintf(stderr, "pikv-cuda-bench: %s\n", pikv_last_error());
        pikv_model_free(m);
        return 1;
    }
    char dev[256] = "";
    pk_cuda_describe(dev, sizeof dev);
    const double bw = pk_cuda_copy_bandwidth();
    printf("device: %s; copy bandwidth %.2f TB/s (read + write)\n", dev, bw / 1e12);

    const int V = c->vocab_size;
    int32_t *ids = malloc((size_t)prompt * sizeof *ids), *next = malloc((size_t)batch * sizeof *next);
    float *logits = malloc((size_t)batch * V * sizeof *logits);
    double *pre = malloc((size_t)reps * sizeof *pre), *dec = malloc((size_t)reps * sizeof *dec);
    uint64_t rng = 1;
    for (int i = 0; i < prompt; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 1 + (int32_t)((rng >> 33) % (uint64_t)(V - 1));
    }
    int rc = 0;
    /* One warm-up repetition (module load, graph capture, cuBLAS heuristics), then the timed ones. */
    for (int r = -1; rc == 0 && r < reps; r++) {
        double t_pre = 0;
        for (int b = 0; rc == 0 && b < batch; b++) {
            rc = pk_cuda_truncate(s, b, 0);
            double t0 = pikv_now();
            if (rc == 0) rc = pk_cuda_forward(s, b, ids, prompt, logits + (size_t)b * V, 0);
            t_pre += pikv_now() - t0;
            next[b] = argmax(logits + (size_t)b * V, V);
        }
        double t0 = pikv_now();
        for (int i = 0; rc == 0 && i < n_new; i++) {
            rc = pk_cuda_decode(s, next, batch, logits);
            for (int b = 0; b < batch; b++) next[b] = argmax(logits + (size_t)b * V, V);
        }
        double t_dec = pikv_now() - t0;
        if (r >= 0) {
            pre[r] = batch * prompt / t_pre;
            dec[r] = batch * n_new / t_dec;
        }
    }
    double replay_us = -1;
    /* Replays start again from the prompt, so that they fit in n_positions as the decode did. */
    for (int b = 0; rc == 0 && graphs && b < batch; b++) rc = pk_cuda_truncate(s, b, prompt);
    if (rc == 0 && graphs) rc = pk_cuda_time_replay(s, batch, 64, &replay_us);
    if (rc) {
        fprintf(stderr, "pikv-cuda-bench: %s\n", pikv_last_error());
    } else {
        pk_cuda_stats st;
        pk_cuda_get_stats(s, &st);
        const pk_summary ps = pk_summarize(pre, reps), ds = pk_summarize(dec, reps);
        const double pm = ps.median, plo = ps.min, phi = ps.max, dm = ds.median, dlo = ds.min, dhi = ds.max;
        /* KV read by one step at the mean context of the decode. */
        const double ctx = prompt + n_new / 2.0;
        const double kv_step = (double)batch * ctx * c->n_layer * c->n_head * 2.0 * c->head_dim * (t == PK_CUDA_F32 ? 4 : 2);
        const double step_bytes = (double)st.weight_bytes + kv_step;
        const double floor_tps = bw / step_bytes * batch;
        printf("model %s, %s, batch %d: weights %.1f MB on the device, KV pool %.1f MB (blocks of %zu bytes)\n", dir,
               type, batch, st.weight_bytes / 1e6, st.pool_bytes / 1e6, st.block_bytes);
        printf("prefill %d tokens: %.0f tok/s median (%.0f..%.0f), %.2f ms\n", prompt, pm, plo, phi,
               1e3 * batch * prompt / pm);
        printf("decode %d tokens after %d: %.0f tok/s median (%.0f..%.0f) over %d runs, %s\n", n_new, prompt, dm, dlo,
               dhi, reps, graphs ? "graph replay" : "plain launches");
        if (replay_us > 0)
            printf("graph replay: %.1f us per step (%.0f tok/s on the device alone); %d kernel launches per step\n",
                   replay_us, 1e6 * batch / replay_us, st.kernels_per_decode);
        printf("floor: %.1f MB per step (weights %.1f + KV %.1f) / %.2f TB/s = %.0f tok/s; decode reaches %.0f%%\n",
               step_bytes / 1e6, st.weight_bytes / 1e6, kv_step / 1e6, bw / 1e12, floor_tps, 100.0 * dm / floor_tps);
        printf("KV in use %.1f MB, high-water %.1f MB\n", st.kv_bytes_in_use / 1e6, st.kv_high_water / 1e6);
    }
    free(ids);
    free(next);
    free(logits);
    free(pre);
    free(dec);
    pk_cuda_session_free(s);
    pikv_model_free(m);
    return rc ? 1 : 0;
}
