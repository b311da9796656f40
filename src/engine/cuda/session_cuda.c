/* A session's calls on the CUDA engine (see session_cuda.h): one sequence of
 * a pk_cuda_session, prefilled and compressed by press_cuda.c, greedy steps
 * chosen on the device. */
#include "engine/cuda/session_cuda.h"
#include "engine/cuda/capacity_cuda.h"
#include "engine/cuda/decoding_cuda.h"
#include "engine/cuda/routing_cuda.h"
#include "engine/device.h"
#include "model/model.h"
#include "util/error.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    pk_cuda_session *s;
    const pikv_model *m;
    pk_cuda_dtype dtype;
    pk_cuda_decoding *decoding;  /* the attached press that acts while decoding, or NULL */
    size_t decoding_bytes;       /* what it has had copied to the host */
    pk_cuda_routing *routing;    /* the query-time routing the last press left, or NULL */
    float *logits;               /* [V]: a routed greedy step's, chosen on the host */
    char press_note[320];        /* how the last prefill's press ran */
} cuda_engine;

static void *cuda_open(const pikv_model *m, const pikv_session_params *p)
{
    if (!pk_cuda_available()) return NULL;
    cuda_engine *e = pk_calloc(1, sizeof *e, "CUDA session");
    if (!e) return NULL;
    e->m = m;
    e->dtype = pk_cuda_dtype_for(p->device_weights);
    const pk_cuda_params params = {.dtype = e->dtype, .max_seq = 1, .use_graphs = 1};
    if (!(e->s = pk_cuda_session_new(m, &params))) {
        pk_free(e);
        return NULL;
    }
    return e;
}

static void detach(cuda_engine *e)
{
    pk_cuda_decoding_free(e->decoding);
    e->decoding = NULL;
    e->decoding_bytes = 0;
    pk_cuda_routing_free(e->routing);
    e->routing = NULL;
}

static void cuda_close(void *engine)
{
    cuda_engine *e = engine;
    detach(e);
    pk_cuda_session_free(e->s);
    pk_free(e->logits);
    pk_free(e);
}

static int cuda_reset(void *engine)
{
    cuda_engine *e = engine;
    e->press_note[0] = 0;
    detach(e);
    return pk_cuda_truncate(e->s, 0, 0);
}

static void add_stats(pikv_press_stats *st, const pk_cuda_press_stats *ps)
{
    st->kv_bytes_before += ps->kv_bytes_before;
    st->kv_bytes_after += ps->kv_bytes_after;
    st->compression_s += ps->compression_s;
}

/* n tokens through the attached press that acts while decoding; the note
 * says what it has had copied so far. */
static int forward_decoding(cuda_engine *e, const int32_t *ids, int n, float *logits, int all_logits,
                            pikv_press_stats *st)
{
    pk_cuda_press_stats ps = {0};
    const int rc = pk_cuda_decoding_forward(e->decoding, ids, n, logits, all_logits, &ps);
    add_stats(st, &ps);
    e->decoding_bytes += ps.bytes_to_host;
    snprintf(e->press_note, sizeof e->press_note,
             "acts while decoding: each call's queries, and the keys and values of a layer it cuts, %s "
             "(%.2f MB to the host so far), applied on the GPU",
             pk_cuda_press_how(ps.mode), e->decoding_bytes / 1e6);
    return rc;
}

static int cuda_prefill(void *engine, const int32_t *ids, int n, pk_press *press, float *logits, pikv_press_stats *st)
{
    cuda_engine *e = engine;
    e->press_note[0] = 0;
    if (!press) return pk_cuda_forward(e->s, 0, ids, n, logits, 0);
    /* The press changes the cache: it routes it or nobody does. */
    pk_cuda_routing_free(e->routing);
    e->routing = NULL;
    if (press->caps & PK_PRESS_WHILE_DECODING) {
        if (!e->decoding && !(e->decoding = pk_cuda_decoding_new(e->s, &e->m->cfg, 0, press))) return -1;
        return forward_decoding(e, ids, n, logits, 0, st);
    }
    pk_cuda_press_stats ps;
    if (pk_cuda_prefill_press(e->s, e->m, 0, ids, n, press, logits, &ps)) return -1;
    add_stats(st, &ps);
    snprintf(e->press_note, sizeof e->press_note, "%s (%.2f MB to the host), applied on the GPU",
             pk_cuda_press_how(ps.mode), ps.bytes_to_host / 1e6);
    if (!(press->caps & PK_PRESS_ROUTES_QUERIES)) return 0;
    if (!(e->routing = pk_cuda_routing_new(e->s, &e->m->cfg, 0, press))) return -1;
    snprintf(e->press_note + strlen(e->press_note), sizeof e->press_note - strlen(e->press_note),
             "; later queries routed on the host layer by layer, the GPU reading only their experts' entries");
    return 0;
}

static int cuda_forward(void *engine, const int32_t *ids, int n, pk_press *attached, float *logits, int all_logits,
                        pikv_press_stats *st)
{
    cuda_engine *e = engine;
    /* The session lets go of a press destroyed before it; the mirror goes with it. */
    if (e->decoding && pk_cuda_decoding_press(e->decoding) != attached) detach(e);
    if (attached && !e->decoding)
        return pk_fail("press '%s' is attached to the session but not to its GPU sequence", attached->name);
    return e->decoding ? forward_decoding(e, ids, n, logits, all_logits, st)
                       : pk_cuda_forward(e->s, 0, ids, n, logits, all_logits);
}

static int cuda_greedy(void *engine, int32_t first, int steps, int32_t *chosen)
{
    cuda_engine *e = engine;
    if (e->decoding)
        return pk_fail("press '%s' acts on every step's queries on the host: the GPU's greedy steps run without it",
                       pk_cuda_decoding_press(e->decoding)->name);
    if (!e->routing) return pk_cuda_decode_greedy_steps(e->s, &first, 1, steps, chosen);
    const int V = e->m->cfg.vocab_size;
    if (!e->logits && !(e->logits = pk_malloc_array((size_t)V, sizeof *e->logits, "logits"))) return -1;
    return pk_cuda_routing_greedy(e->routing, first, steps, e->logits, chosen);
}

static int cuda_position(const void *engine)
{
    const cuda_engine *e = engine;
    return pk_cuda_position(e->s, 0);
}

static size_t cuda_kv_bytes(const void *engine)
{
    const cuda_engine *e = engine;
    return pk_cuda_sequence_bytes(e->s, 0, 0);
}

static int cuda_kv_len(const void *engine, int layer, int head)
{
    const cuda_engine *e = engine;
    return pk_cuda_head_length(e->s, 0, layer, head, NULL);
}

static pikv_kv_type cuda_kv_type(const void *engine)
{
    const cuda_engine *e = engine;
    return e->dtype == PK_CUDA_F32 ? PIKV_KV_F32 : e->dtype == PK_CUDA_F16 ? PIKV_KV_F16 : PIKV_KV_BF16;
}

static const char *cuda_press_note(const void *engine)
{
    const cuda_engine *e = engine;
    return e->press_note;
}

/* Sequences decoded together at most in a capacity run. */
enum { MAX_CAPACITY_SEQ = 4096 };

static int cuda_capacity(void *engine, const int32_t *ids, int n, pk_press *press, int n_gen, size_t budget,
                         pk_device_capacity *out)
{
    cuda_engine *e = engine;
    pk_cuda_capacity plan;
    pk_cuda_batch_run run;
    e->press_note[0] = 0;
    if (pk_cuda_measure_capacity(e->s, e->m, e->dtype, ids, n, press, n_gen, budget, MAX_CAPACITY_SEQ, &plan, &run))
        return -1;
    out->admitted = plan.admitted;
    out->ran = plan.admitted < MAX_CAPACITY_SEQ ? plan.admitted : MAX_CAPACITY_SEQ;
    out->budget_bytes = budget;
    out->per_seq_bytes = plan.per_seq_bytes;
    out->decode_tok_s = run.decode_s > 0 ? (double)out->ran * n_gen / run.decode_s : 0;
    return 0;
}

static const pk_device_ops cuda_ops = {
    .name = "cuda",
    .open = cuda_open,
    .close = cuda_close,
    .reset = cuda_reset,
    .prefill = cuda_prefill,
    .forward = cuda_forward,
    .greedy = cuda_greedy,
    .position = cuda_position,
    .kv_bytes = cuda_kv_bytes,
    .kv_len = cuda_kv_len,
    .kv_type = cuda_kv_type,
    .press_note = cuda_press_note,
    .capacity = cuda_capacity,
};

int pk_cuda_device_register(void) { return pk_device_register(&cuda_ops); }
