#include "bench/shard_loads.h"
#include "bench/compare.h"
#include "engine/session.h"
#include "util/error.h"

int pk_measure_head_lens(pikv_session *s, pikv_press *press, const pk_haystack *h, int n_seq, int tokens,
                         uint64_t seed, void (*progress)(int done, int total, void *ctx), void *ctx, int *len)
{
    if (!s || !h || !len || n_seq < 1 || tokens < 1)
        return pk_fail("measuring shard loads: %d contexts of %d tokens", n_seq, tokens);
    const pikv_config *c = &s->model->cfg;
    for (int i = 0; i < n_seq; i++) {
        pk_task t;
        if (pk_compare_needle_task(h, tokens, seed + (uint64_t)i, &t)) return -1;
        pikv_session_reset(s);
        const int rc = pikv_prefill(s, t.context, t.n_context, press, NULL);
        pk_task_free(&t);
        if (rc) return -1;
        for (int l = 0; l < c->n_layer; l++)
            for (int hh = 0; hh < c->n_head; hh++)
                len[((size_t)i * c->n_layer + l) * c->n_head + hh] = pk_kv_head_at(&s->fwd.kv, l, hh)->len;
        if (progress) progress(i + 1, n_seq, ctx);
    }
    pikv_session_reset(s);
    return 0;
}

size_t pk_session_entry_bytes(const pikv_session *s) { return pk_kv_entry_bytes(&s->fwd.kv); }

void pk_batch_shards(const int *len, int n_seq, int n_layer, int n_head, int batch, int *out)
{
    for (int l = 0; l < n_layer; l++)
        for (int h = 0; h < n_head; h++)
            for (int b = 0; b < batch; b++)
                out[((size_t)l * n_head + h) * batch + b] = len[((size_t)(b % n_seq) * n_layer + l) * n_head + h];
}
