/* Batches and capacity on the CUDA engine (see capacity_cuda.h). */
#include "engine/cuda/capacity_cuda.h"
#include "engine/cuda/decoding_cuda.h"
#include "engine/cuda/routing_cuda.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

/* pk_cuda_run_batch of one sequence with a press that acts while decoding:
 * the press sees every call's queries on the host, so each step's token is
 * chosen there from its logits. The press's time is part of the decode's. */
static int run_decoding(pk_cuda_session *s, const pikv_model *m, const int32_t *prompt, int n_prompt, pk_press *press,
                        int n_gen, pk_cuda_batch_run *out)
{
    static const pikv_sampling greedy = {.greedy = 1};
    const int V = m->cfg.vocab_size;
    float *logits = pk_malloc_array((size_t)V, sizeof *logits, "logits");
    if (press->ops->restart) press->ops->restart(press); /* a new sequence */
    pk_cuda_decoding *d = logits && pk_cuda_truncate(s, 0, 0) == 0 ? pk_cuda_decoding_new(s, &m->cfg, 0, press) : NULL;
    pk_cuda_press_stats calls = {0};
    const double t0 = pikv_now();
    int rc = d ? pk_cuda_decoding_forward(d, prompt, n_prompt, logits, 0, &calls) : -1;
    out->prefill_s = pikv_now() - t0 - calls.compression_s;
    out->press.kv_bytes_before = pk_cuda_sequence_bytes(s, 0, n_gen); /* what the tokens would hold uncut */
    const double t1 = pikv_now();
    for (int i = 0; rc == 0 && i < n_gen; i++) {
        const int32_t next = pikv_sample(logits, V, &greedy, NULL);
        rc = pk_cuda_decoding_forward(d, &next, 1, logits, 0, &calls);
    }
    out->decode_s = pikv_now() - t1;
    out->press.mode = calls.mode;
    out->press.prefill_s = out->prefill_s;
    out->press.compression_s = calls.compression_s;
    out->press.bytes_to_host = calls.bytes_to_host;
    out->press.kv_bytes_after = out->kv_in_use = pk_cuda_sequence_bytes(s, 0, 0);
    pk_cuda_decoding_free(d);
    pk_free(logits);
    return rc;
}

/* pk_cuda_run_batch of one sequence with a press that routes later
 * queries: the prompt is compressed as by any press, then the steps stop at
 * every layer for the host to route their queries (pk_cuda_routing_greedy). */
static int run_routed(pk_cuda_session *s, const pikv_model *m, const int32_t *prompt, int n_prompt, pk_press *press,
                      int n_gen, pk_cuda_batch_run *out)
{
    static const pikv_sampling greedy = {.greedy = 1};
    const int V = m->cfg.vocab_size;
    float *logits = pk_malloc_array((size_t)V, sizeof *logits, "logits");
    int rc = logits ? 0 : -1;
    if (rc == 0) rc = pk_cuda_truncate(s, 0, 0) || pk_cuda_prefill_press(s, m, 0, prompt, n_prompt, press, logits,
                                                                         &out->press);
    out->prefill_s = out->press.prefill_s;
    pk_cuda_routing *r = rc == 0 ? pk_cuda_routing_new(s, &m->cfg, 0, press) : NULL;
    if (!r) rc = -1;
    const double t0 = pikv_now();
    if (rc == 0) rc = pk_cuda_routing_greedy(r, pikv_sample(logits, V, &greedy, NULL), n_gen, logits, NULL);
    out->decode_s = pikv_now() - t0;
    if (r) out->press.bytes_to_host += pk_cuda_routing_bytes(r);
    out->kv_in_use = pk_cuda_sequence_bytes(s, 0, 0);
    pk_cuda_routing_free(r);
    pk_free(logits);
    return rc;
}

int pk_cuda_run_batch(pk_cuda_session *s, const pikv_model *m, const int32_t *prompt, int n_prompt, pk_press *press,
                      int batch, int n_gen, pk_cuda_batch_run *out)
{
    static const pikv_sampling greedy = {.greedy = 1};
    memset(out, 0, sizeof *out);
    if (batch != 1) {
        char where[48];
        snprintf(where, sizeof where, "a batch of %d", batch);
        if (pk_cuda_refuse_one_sequence(press, where)) return -1;
    }
    if (press && (press->caps & PK_PRESS_WHILE_DECODING))
        return run_decoding(s, m, prompt, n_prompt, press, n_gen, out);
    if (press && (press->caps & PK_PRESS_ROUTES_QUERIES)) return run_routed(s, m, prompt, n_prompt, press, n_gen, out);
    const int V = m->cfg.vocab_size;
    float *logits = pk_malloc_array((size_t)V, sizeof *logits, "logits");
    int32_t *next = pk_malloc_array((size_t)batch, sizeof *next, "next tokens");
    int32_t *chosen = pk_malloc_array((size_t)(n_gen > 0 ? n_gen : 1) * (size_t)batch, sizeof *chosen, "greedy choices");
    int rc = logits && next && chosen ? 0 : -1;
    for (int b = 0; rc == 0 && b < batch; b++) {
        rc = pk_cuda_truncate(s, b, 0) || pk_cuda_prefill_press(s, m, b, prompt, n_prompt, press, logits, &out->press);
        out->prefill_s += out->press.prefill_s;
        next[b] = rc ? 0 : pikv_sample(logits, V, &greedy, NULL);
    }
    const double t0 = pikv_now();
    if (rc == 0 && n_gen > 0) rc = pk_cuda_decode_greedy_steps(s, next, batch, n_gen, chosen);
    out->decode_s = pikv_now() - t0;
    if (rc == 0) {
        pk_cuda_stats st;
        pk_cuda_get_stats(s, &st);
        out->kv_in_use = st.kv_bytes_in_use;
    }
    pk_free(logits);
    pk_free(next);
    pk_free(chosen);
    return rc;
}

int pk_cuda_plan_capacity(pk_cuda_session *probe, const pikv_model *m, const int32_t *ids, int n, pk_press *press,
                          int n_gen, size_t budget, pk_cuda_capacity *out)
{
    memset(out, 0, sizeof *out);
    if (n_gen < 0) return pk_fail("capacity: %d tokens to decode", n_gen);
    if (pk_cuda_refuse_one_sequence(press, "in a capacity run")) return -1;
    pk_cuda_press_stats st;
    if (pk_cuda_truncate(probe, 0, 0) || pk_cuda_prefill_press(probe, m, 0, ids, n, press, NULL, &st)) return -1;
    if (n + n_gen > m->cfg.n_positions)
        return pk_fail("capacity: %d prompt tokens and %d to decode pass the model's %d positions", n, n_gen,
                       m->cfg.n_positions);
    pk_cuda_stats ps;
    pk_cuda_get_stats(probe, &ps);
    out->budget_bytes = budget;
    out->block_bytes = ps.block_bytes;
    out->per_seq_bytes = pk_cuda_sequence_bytes(probe, 0, n_gen);
    out->headroom_bytes = st.kv_bytes_before > out->per_seq_bytes ? st.kv_bytes_before - out->per_seq_bytes : 0;
    const size_t admitted = out->per_seq_bytes ? budget / out->per_seq_bytes : 0;
    out->admitted = admitted > 0x7fffffff ? 0x7fffffff : (int)admitted;
    return pk_cuda_truncate(probe, 0, 0);
}

int pk_cuda_measure_capacity(pk_cuda_session *probe, const pikv_model *m, pk_cuda_dtype t, const int32_t *ids, int n,
                             pk_press *press, int n_gen, size_t budget, int max_seq, pk_cuda_capacity *plan,
                             pk_cuda_batch_run *run)
{
    memset(run, 0, sizeof *run);
    if (pk_cuda_plan_capacity(probe, m, ids, n, press, n_gen, budget, plan)) return -1;
    if (plan->admitted < 1)
        return pk_fail("capacity: a budget of %zu bytes holds no sequence of %zu bytes (%d + %d tokens)", budget,
                       plan->per_seq_bytes, n, n_gen);
    const int batch = plan->admitted < max_seq ? plan->admitted : max_seq;
    const pk_cuda_params params = {.dtype = t, .max_seq = batch,
                                   .pool_blocks = (long)((plan->budget_bytes + plan->headroom_bytes) / plan->block_bytes),
                                   .use_graphs = 1};
    pk_cuda_session *s = pk_cuda_session_new(m, &params);
    int rc = s ? 0 : -1;
    for (int i = 0; rc == 0 && i < 2; i++) rc = pk_cuda_run_batch(s, m, ids, n, press, batch, n_gen, run);
    pk_cuda_session_free(s);
    return rc;
}
