/* Sessions: creation, reset, inspection of the cache, and marks that let
 * several questions share one compressed context. */
#include "model/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <omp.h>
#include <string.h>

pikv_session *pikv_session_new(const pikv_model *m, int n_threads)
{
    if (!m) {
        pk_fail("pikv_session_new: model is NULL");
        return NULL;
    }
    if (n_threads > 4096) {
        pk_fail("pikv_session_new: %d threads is out of range (at most 4096; <= 0 for all cores)", n_threads);
        return NULL;
    }
    pikv_session *s = pk_calloc(1, sizeof *s, "session");
    if (!s) return NULL;
    s->model = m;
    s->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
    const pikv_config *c = &m->cfg;
    s->scores = pk_malloc_array((size_t)s->n_threads * PK_QUERY_BLOCK * (size_t)c->n_positions, sizeof(float),
                                "attention scores");
    if (!s->scores || pk_kv_init(&s->kv, c->n_layer, c->n_head, c->head_dim)) {
        pikv_session_free(s);
        return NULL;
    }
    return s;
}

void pikv_session_free(pikv_session *s)
{
    if (!s) return;
    pk_kv_free(&s->kv);
    pk_session_free_scratch(s);
    pk_kv_snapshot_free(&s->mark);
    pk_placement_free(&s->plan);
    pk_free(s->worker_scores);
    pk_free(s->head_len);
    pk_free(s->partials);
    pk_free(s->route_idx);
    pk_free(s->scores);
    pk_free(s);
}

void pikv_session_reset(pikv_session *s)
{
    if (!s) return;
    pk_kv_clear(&s->kv);
    s->pos = 0;
    s->marked = 0;
    memset(&s->stats, 0, sizeof s->stats);
    if (s->attached && s->attached->ops->restart) s->attached->ops->restart(s->attached);
    s->attached = NULL;
    s->routing = NULL;
}

const pikv_model *pikv_session_model(const pikv_session *s)
{
    if (!s) pk_fail("pikv_session_model: session is NULL");
    return s ? s->model : NULL;
}

int pikv_session_threads(const pikv_session *s)
{
    return s ? s->n_threads : pk_fail("pikv_session_threads: session is NULL");
}

int pikv_session_position(const pikv_session *s)
{
    return s ? s->pos : pk_fail("pikv_session_position: session is NULL");
}

size_t pikv_session_kv_bytes(const pikv_session *s)
{
    if (!s) {
        pk_fail("pikv_session_kv_bytes: session is NULL");
        return 0;
    }
    return pk_kv_bytes(&s->kv);
}

int pikv_session_kv_len(const pikv_session *s, int layer, int head)
{
    if (!s) return pk_fail("pikv_session_kv_len: session is NULL");
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    return pk_kv_at(&s->kv, layer, head)->len;
}

int pikv_session_kv_read(const pikv_session *s, int layer, int head, int values, float *out, int cap_rows)
{
    if (!s || (!out && cap_rows > 0)) return pk_fail("pikv_session_kv_read: session or output is NULL");
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    const pk_kv_head *h = pk_kv_at(&s->kv, layer, head);
    if (h->len > cap_rows) return pk_fail("KV cache: %d rows do not fit in %d", h->len, cap_rows);
    memcpy(out, values ? h->v : h->k, (size_t)h->len * (size_t)c->head_dim * sizeof(float));
    return h->len;
}


void pikv_session_press_stats(const pikv_session *s, pikv_press_stats *st)
{
    if (!st) return;
    if (!s) {
        memset(st, 0, sizeof *st);
        pk_fail("pikv_session_press_stats: session is NULL");
        return;
    }
    *st = s->stats;
}

int pikv_session_mark(pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_mark: session is NULL");
    if (pk_kv_snapshot_take(&s->kv, &s->mark)) return -1;
    s->mark_pos = s->pos;
    s->mark_epoch = s->kv.epoch;
    s->marked = 1;
    return 0;
}

int pikv_session_rewind(pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_rewind: session is NULL");
    if (!s->marked) return pk_fail("session: rewind without a mark");
    if (s->kv.epoch != s->mark_epoch)
        return pk_fail("session: the cache was compressed after the mark, so it cannot be rewound");
    if (pk_kv_snapshot_restore(&s->kv, &s->mark)) return -1;
    s->pos = s->mark_pos;
    return 0;
}

int pikv_session_set_workers(pikv_session *s, int workers, int balanced)
{
    if (!s) return pk_fail("pikv_session_set_workers: session is NULL");
    if (workers < 0 || workers > 1024) return pk_fail("workers: %d is out of range 0..1024", workers);
    pk_free(s->worker_scores);
    pk_free(s->head_len);
    s->worker_scores = NULL;
    s->head_len = NULL;
    s->workers = workers > 1 ? workers : 0;
    s->placement = balanced ? PK_PLACE_EPLB : PK_PLACE_EQUAL_COUNT;
    s->imbalance_sum = 0;
    s->imbalance_steps = 0;
    if (s->workers &&
        (!(s->worker_scores = pk_malloc_array((size_t)workers * (size_t)s->model->cfg.n_positions, sizeof(float),
                                              "worker scores")) ||
         !(s->head_len = pk_malloc_array((size_t)s->model->cfg.n_head, sizeof(int), "worker placement")))) {
        s->workers = 0;
        return -1;
    }
    return 0;
}

double pikv_session_worker_imbalance(const pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_worker_imbalance: session is NULL");
    return s->imbalance_steps ? s->imbalance_sum / (double)s->imbalance_steps : 1.0;
}
