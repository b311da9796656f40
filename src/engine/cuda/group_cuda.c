#include "engine/cuda/group_cuda.h"
#include "engine/cuda/press_cuda.h"
#include "router/shard_plan.h"
#include "util/error.h"
#include "util/mem.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum { MAX_GPUS = 64 };

struct pk_cuda_group {
    const pikv_model *model;
    int n_gpu, n_placed;
    int devices[MAX_GPUS];
    pk_cuda_session *ranks[MAX_GPUS];
    pk_cuda_exchange *exchange;
    pk_place_policy policy;
};

/* One rank's part of a call made on every GPU at once. */
typedef struct {
    pk_cuda_group *g;
    int rank;
    int (*work)(pk_cuda_group *g, int rank, void *arg);
    void *arg;
    int rc;
    char error[512];
} rank_call;

static void *run_rank(void *p)
{
    rank_call *c = p;
    c->rc = pk_cuda_use_device(c->g->devices[c->rank]) || c->work(c->g, c->rank, c->arg) ? -1 : 0;
    if (c->rc) {
        snprintf(c->error, sizeof c->error, "%s", pikv_last_error());
        /* The others may be waiting for this rank in an exchange. */
        pk_cuda_exchange_abort(c->g->exchange);
    }
    return NULL;
}

/* work(g, rank, arg) on every GPU at once, a thread each (the ranks meet in
 * their exchanges); the first failure's error, named by its GPU. */
static int on_every_gpu(pk_cuda_group *g, int (*work)(pk_cuda_group *, int, void *), void *arg)
{
    rank_call calls[MAX_GPUS];
    pthread_t threads[MAX_GPUS];
    int started = 0;
    for (int r = 0; r < g->n_gpu; r++) {
        calls[r] = (rank_call){g, r, work, arg, 0, ""};
        if (pthread_create(&threads[r], NULL, run_rank, &calls[r]) != 0) {
            calls[r].rc = -1;
            snprintf(calls[r].error, sizeof calls[r].error, "could not start a thread");
            pk_cuda_exchange_abort(g->exchange);
            break;
        }
        started++;
    }
    for (int r = 0; r < started; r++) pthread_join(threads[r], NULL);
    for (int r = 0; r < g->n_gpu; r++)
        if (calls[r].rc) return pk_fail("GPU %d (rank %d): %s", g->devices[r], r, calls[r].error);
    return 0;
}

void pk_cuda_group_free(pk_cuda_group *g)
{
    if (!g) return;
    for (int r = 0; r < g->n_gpu; r++)
        if (g->ranks[r] && pk_cuda_use_device(g->devices[r]) == 0) pk_cuda_session_free(g->ranks[r]);
    pk_cuda_exchange_free(g->exchange);
    pk_free(g);
}

pk_cuda_group *pk_cuda_group_new(const pikv_model *m, const pk_cuda_group_params *p)
{
    if (p->n_gpu < 1 || p->n_gpu > MAX_GPUS) return pk_fail("--gpus: %d, expected 1..%d", p->n_gpu, MAX_GPUS), NULL;
    const int present = pk_cuda_device_count();
    if (!p->one_device && p->n_gpu > present)
        return pk_fail("--gpus: %d GPUs asked for, %d present", p->n_gpu, present), NULL;
    pk_cuda_group *g = pk_calloc(1, sizeof *g, "GPU group");
    if (!g) return NULL;
    g->model = m;
    g->n_gpu = p->n_gpu;
    g->policy = p->policy;
    for (int r = 0; r < g->n_gpu; r++) g->devices[r] = p->one_device ? 0 : r;
    g->exchange = pk_cuda_exchange_new(g->n_gpu, g->devices, p->one_device ? PK_CUDA_HOST_COPIES : PK_CUDA_NCCL);
    if (!g->exchange) {
        pk_cuda_group_free(g);
        return NULL;
    }
    pk_cuda_params sp = p->session;
    sp.use_graphs = 0;
    for (int r = 0; r < g->n_gpu; r++)
        if (pk_cuda_use_device(g->devices[r]) || !(g->ranks[r] = pk_cuda_session_new(m, &sp))) {
            pk_cuda_group_free(g);
            return NULL;
        }
    return g;
}

pk_cuda_session *pk_cuda_group_session(pk_cuda_group *g, int rank)
{
    return rank >= 0 && rank < g->n_gpu ? g->ranks[rank] : NULL;
}

int pk_cuda_group_prefill(pk_cuda_group *g, int seq, const int32_t *ids, int n, pk_press *press, float *logits)
{
    if (g->n_placed) return pk_fail("GPU group: the caches are placed already; only decode steps run now");
    if (pk_cuda_refuse_one_sequence(press, "in a GPU group")) return -1;
    const pikv_config *c = pikv_model_config(g->model);
    /* One rank after another: a press is not made to be run from several threads at once. */
    for (int r = 0; r < g->n_gpu; r++) {
        pk_cuda_press_stats st;
        if (pk_cuda_use_device(g->devices[r]) ||
            pk_cuda_prefill_press(g->ranks[r], g->model, seq, ids, n, press, r == 0 ? logits : NULL, &st))
            return pk_fail("GPU %d (rank %d): %s", g->devices[r], r, pikv_last_error());
        for (int l = 0; r > 0 && l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++)
                if (pk_cuda_head_length(g->ranks[r], seq, l, h, NULL) !=
                    pk_cuda_head_length(g->ranks[0], seq, l, h, NULL))
                    return pk_fail("GPU group: the press kept %d entries of layer %d head %d on rank %d and %d on "
                                   "rank 0; its decisions must not differ between GPUs",
                                   pk_cuda_head_length(g->ranks[r], seq, l, h, NULL), l, h, r,
                                   pk_cuda_head_length(g->ranks[0], seq, l, h, NULL));
    }
    return 0;
}

/* One layer's placement turned into what each rank keeps: for rank r and
 * shard i (= sequence * n_head + head), the slots of its slices, ascending,
 * in slots[(r * n_shard + i) * stride ...] with their count in n[r * n_shard
 * + i], and the rank that holds the shard's last entry in tail[i]. A ring
 * goes whole to that rank. owner [n_shard][stride] is scratch. */
typedef struct {
    int n_shard, stride;
    int32_t *slots;
    int *n, *tail, *owner;
} layer_cut;

static void cut_layer(const pk_placement *pl, const int *len, const int *ring, int n_gpu, layer_cut *cut)
{
    const int S = cut->n_shard;
    for (int i = 0; i < S; i++) cut->tail[i] = i % n_gpu; /* where an empty shard's new entries go */
    /* Every entry lies in exactly one work item: mark its rank (a rank may hold two replicas of one shard). */
    for (int r = 0; r < n_gpu; r++)
        for (int k = pl->first[r]; k < pl->first[r + 1]; k++) {
            const pk_work_item *it = &pl->items[k];
            for (int j = it->start; j < it->start + it->count; j++) cut->owner[(size_t)it->head * cut->stride + j] = r;
            if (it->count > 0 && it->start + it->count == len[it->head]) cut->tail[it->head] = r;
        }
    memset(cut->n, 0, (size_t)n_gpu * S * sizeof *cut->n);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < len[i]; j++) {
            const int r = ring[i] ? cut->tail[i] : cut->owner[(size_t)i * cut->stride + j];
            cut->slots[((size_t)r * S + i) * cut->stride + cut->n[r * S + i]++] = j;
        }
}

/* The per-GPU entries of a placement that cut_layer produced, for the report. */
static void tally_cut(const layer_cut *cut, int n_gpu, long *entries, long *split)
{
    for (int r = 0; r < n_gpu; r++) {
        entries[r] = 0;
        for (int i = 0; i < cut->n_shard; i++) entries[r] += cut->n[r * cut->n_shard + i];
    }
    for (int i = 0; i < cut->n_shard; i++) {
        int holders = 0;
        for (int r = 0; r < n_gpu; r++) holders += cut->n[r * cut->n_shard + i] > 0;
        *split += holders > 1;
    }
}

/* Each GPU's exchange starts once every cache is cut. */
static int start_exchange(pk_cuda_group *g, int rank, void *arg)
{
    (void)arg;
    return pk_cuda_set_exchange(g->ranks[rank], g->n_gpu, pk_cuda_exchange_function(g->exchange),
                                pk_cuda_exchange_rank_of(g->exchange, rank));
}

int pk_cuda_group_place(pk_cuda_group *g, int n_seq, pk_cuda_group_report *rep)
{
    if (g->n_placed) return pk_fail("GPU group: the caches are placed already");
    const pikv_config *c = pikv_model_config(g->model);
    const int H = c->n_head, L = c->n_layer, S = n_seq * H, G = g->n_gpu;
    if (n_seq < 1) return pk_fail("GPU group: %d sequences to place", n_seq);
    int *len = pk_malloc_array((size_t)L * S, sizeof *len, "shard lengths");
    int *ring = pk_malloc_array((size_t)S, sizeof *ring, "shard rings");
    layer_cut cut = {S, c->n_positions, NULL, NULL, NULL, NULL};
    cut.slots = pk_malloc_array((size_t)G * S * cut.stride, sizeof *cut.slots, "shard slots");
    cut.n = pk_malloc_array((size_t)G * S, sizeof *cut.n, "shard counts");
    cut.tail = pk_malloc_array((size_t)S, sizeof *cut.tail, "shard tails");
    cut.owner = pk_malloc_array((size_t)S * cut.stride, sizeof *cut.owner, "shard owners");
    pk_cuda_head_keep *heads = pk_calloc((size_t)H, sizeof *heads, "shard heads");
    int *tail = pk_calloc((size_t)H, sizeof *tail, "shard tails");
    /* What each GPU holds, layer by layer, in the shape pk_shard_plan_imbalance reads. */
    pk_shard_plan held = {.n_layer = L, .gpus = G}, equal = {0};
    held.entries = pk_calloc((size_t)L * G, sizeof *held.entries, "entries per GPU");
    int rc = len && ring && cut.slots && cut.n && cut.tail && cut.owner && heads && tail && held.entries ? 0 : -1;
    for (int l = 0; rc == 0 && l < L; l++)
        for (int i = 0; i < S; i++) {
            len[(size_t)l * S + i] = pk_cuda_head_length(g->ranks[0], i / H, l, i % H, NULL);
            if (len[(size_t)l * S + i] < 0) rc = -1;
        }
    /* What the report compares against. */
    if (rc == 0) rc = pk_shard_plan_make(len, L, S, G, PK_PLACE_EQUAL_COUNT, &equal);
    pk_placement pl = {0}; /* pk_place_heads reuses its buffers from layer to layer */
    for (int l = 0; rc == 0 && l < L; l++) {
        const int *ll = len + (size_t)l * S;
        for (int i = 0; i < S; i++) ring[i] = pk_cuda_head_streams(g->ranks[0], i / H, l, i % H);
        if (pk_place_heads(ll, S, G, g->policy, &pl)) {
            rc = -1;
            break;
        }
        cut_layer(&pl, ll, ring, G, &cut);
        tally_cut(&cut, G, held.entries + (size_t)l * G, &held.split);
        for (int r = 0; rc == 0 && r < G; r++) {
            if (pk_cuda_use_device(g->devices[r])) rc = -1;
            for (int b = 0; rc == 0 && b < n_seq; b++) {
                for (int h = 0; h < H; h++) {
                    const int i = b * H + h;
                    heads[h] = (pk_cuda_head_keep){.slots = cut.slots + ((size_t)r * S + i) * cut.stride,
                                                   .n = cut.n[r * S + i]};
                    tail[h] = cut.tail[i] == r;
                }
                if (pk_cuda_keep_shard(g->ranks[r], b, l, heads, tail))
                    rc = pk_fail("GPU %d (rank %d): %s", g->devices[r], r, pikv_last_error());
            }
        }
    }
    pk_placement_free(&pl);
    if (rc == 0) rc = on_every_gpu(g, start_exchange, NULL);
    if (rc == 0) g->n_placed = n_seq;
    if (rc == 0 && rep) {
        memset(rep, 0, sizeof *rep);
        rep->n_gpu = G;
        for (int r = 0; r < G && r < 64; r++) {
            pk_cuda_stats st;
            pk_cuda_get_stats(g->ranks[r], &st);
            rep->entries[r] = pk_shard_plan_gpu_entries(&held, r);
            rep->kv_bytes[r] = st.kv_bytes_in_use;
        }
        rep->imbalance = pk_shard_plan_imbalance(&held);
        rep->equal_imbalance = pk_shard_plan_imbalance(&equal);
        rep->split_shards = held.split;
    }
    pk_shard_plan_free(&held);
    pk_shard_plan_free(&equal);
    pk_free(len);
    pk_free(ring);
    pk_free(cut.slots);
    pk_free(cut.n);
    pk_free(cut.tail);
    pk_free(cut.owner);
    pk_free(heads);
    pk_free(tail);
    return rc;
}

/* A decode call's arguments, and each rank's results (logits, or greedy choices). */
typedef struct {
    const int32_t *ids;
    int n_seq, steps, greedy;
    void **results;  /* [n_gpu], or NULL for a step whose logits are not wanted */
} decode_call;

static int decode_on_rank(pk_cuda_group *g, int rank, void *arg)
{
    decode_call *d = arg;
    pk_cuda_session *s = g->ranks[rank];
    if (d->greedy) return pk_cuda_decode_greedy_steps(s, d->ids, d->n_seq, d->steps, d->results[rank]);
    return pk_cuda_decode(s, d->ids, d->n_seq, d->results ? d->results[rank] : NULL);
}

/* Run d on every GPU, each rank's results in `bytes` of scratch, check that
 * every rank's equal the first's, and copy them to out (may be NULL). */
static int decode_everywhere(pk_cuda_group *g, decode_call *d, size_t bytes, void *out)
{
    if (!g->n_placed) return pk_fail("GPU group: place the caches (pk_cuda_group_place) before decoding");
    if (d->n_seq != g->n_placed)
        return pk_fail("GPU group: %d sequences to decode, %d placed", d->n_seq, g->n_placed);
    void *results[MAX_GPUS] = {0};
    int rc = 0;
    for (int r = 0; rc == 0 && out && r < g->n_gpu; r++)
        if (!(results[r] = pk_malloc_array(1, bytes, "decode results"))) rc = -1;
    d->results = out ? results : NULL;
    if (rc == 0) rc = on_every_gpu(g, decode_on_rank, d);
    for (int r = 1; rc == 0 && out && r < g->n_gpu; r++)
        if (memcmp(results[r], results[0], bytes) != 0)
            rc = pk_fail("GPU group: rank %d's %s differ from rank 0's", r, d->greedy ? "greedy choices" : "logits");
    if (rc == 0 && out) memcpy(out, results[0], bytes);
    for (int r = 0; r < g->n_gpu; r++) pk_free(results[r]);
    return rc;
}

int pk_cuda_group_decode(pk_cuda_group *g, const int32_t *ids, int n_seq, float *logits)
{
    decode_call d = {ids, n_seq, 1, 0, NULL};
    const size_t bytes = (size_t)(n_seq > 0 ? n_seq : 1) * pikv_model_config(g->model)->vocab_size * sizeof(float);
    return decode_everywhere(g, &d, bytes, logits);
}

int pk_cuda_group_decode_greedy_steps(pk_cuda_group *g, const int32_t *ids, int n_seq, int steps, int32_t *chosen)
{
    if (!chosen || steps < 1) return pk_fail("GPU group: %d greedy steps", steps);
    decode_call d = {ids, n_seq, steps, 1, NULL};
    return decode_everywhere(g, &d, (size_t)steps * (n_seq > 0 ? n_seq : 1) * sizeof(int32_t), chosen);
}
