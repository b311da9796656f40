/* Sessions: creation, reset, inspection of the cache, and marks that let
 * several questions share one compressed context. */
#include "engine/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <omp.h>
#include <string.h>

pikv_session_params pikv_session_default_params(void)
{
    return (pikv_session_params){.n_threads = 0, .workers = 0, .balanced_workers = 1, .kv_type_k = PIKV_KV_F32,
                                 .kv_type_v = PIKV_KV_F32, .device = NULL,
                                 .device_weights = PIKV_WEIGHTS_AS_STORED};
}

/* A session whose cache stores keys and values in the given types; `caller`
 * names the public function in errors. */
static pikv_session *session_new(const pikv_model *m, int n_threads, pikv_kv_type type_k, pikv_kv_type type_v,
                                 const char *caller)
{
    if (!m) {
        pk_fail("%s: model is NULL", caller);
        return NULL;
    }
    if (n_threads > 4096) {
        pk_fail("%s: %d threads is out of range (at most 4096; <= 0 for all cores)", caller, n_threads);
        return NULL;
    }
    pikv_session *s = pk_calloc(1, sizeof *s, "session");
    if (!s) return NULL;
    s->model = m;
    if (pk_forward_init(&s->fwd, m, n_threads > 0 ? n_threads : omp_get_num_procs(), type_k, type_v) ||
        pk_keep_set_init(&s->presses.keep, m->cfg.n_head)) {
        pikv_session_free(s);
        return NULL;
    }
    return s;
}

pikv_session *pikv_session_new_with_params(const pikv_model *m, const pikv_session_params *p)
{
    if (!p) {
        pk_fail("pikv_session_new_with_params: params is NULL");
        return NULL;
    }
    const int on_device = p->device && strcmp(p->device, "cpu") != 0;
    const pk_device_ops *ops = on_device ? pk_device_find(p->device) : NULL;
    if (on_device && !ops) return NULL;
    if (on_device && p->workers > 1) {
        pk_fail("pikv_session_new_with_params: placed workers (%d) are not on the %s engine", p->workers, ops->name);
        return NULL;
    }
    /* A device session keeps an empty CPU cache: nothing reads it, since
     * every call that would goes to the device or is refused. */
    pikv_session *s = session_new(m, p->n_threads, on_device ? PIKV_KV_F32 : p->kv_type_k,
                                  on_device ? PIKV_KV_F32 : p->kv_type_v, "pikv_session_new_with_params");
    if (s && ops && !(s->device.engine = ops->open(m, p))) {
        pikv_session_free(s);
        return NULL;
    }
    if (s) s->device.ops = ops;
    if (s && p->workers > 1 && pikv_session_set_workers(s, p->workers, p->balanced_workers)) {
        pikv_session_free(s);
        return NULL;
    }
    return s;
}

int pk_session_cpu_only(const pikv_session *s, const char *what)
{
    return s->device.ops ? pk_fail("%s is not on the %s engine", what, s->device.ops->name) : 0;
}

const char *pk_session_press_note(const pikv_session *s)
{
    return s->device.ops ? s->device.ops->press_note(s->device.engine) : "";
}

int pk_session_capacity(pikv_session *s, const int32_t *ids, int n, pk_press *press, int n_gen, size_t budget,
                        pk_device_capacity *out)
{
    memset(out, 0, sizeof *out);
    if (!s->device.ops) return pk_fail("capacity at a KV budget is measured on a device (--device cuda)");
    return s->device.ops->capacity(s->device.engine, ids, n, press, n_gen, budget, out);
}

const char *pikv_session_device(const pikv_session *s)
{
    if (!s) pk_fail("pikv_session_device: session is NULL");
    return !s ? NULL : s->device.ops ? s->device.ops->name : "cpu";
}

pikv_session *pikv_session_new(const pikv_model *m, int n_threads)
{
    return session_new(m, n_threads, PIKV_KV_F32, PIKV_KV_F32, "pikv_session_new");
}

void pikv_session_free(pikv_session *s)
{
    if (!s) return;
    pk_session_release(s);
    if (s->device.engine) s->device.ops->close(s->device.engine);
    pk_forward_free(&s->fwd);
    pk_keep_set_free(&s->presses.keep);
    pk_kv_snapshot_free(&s->mark.snapshot);
    pk_placement_free(&s->workers.plan);
    pk_free(s->workers.scores);
    pk_free(s->workers.head_len);
    pk_free(s->workers.partials);
    pk_free(s->routing.idx);
    pk_free(s);
}

void pikv_session_reset(pikv_session *s)
{
    if (!s) return;
    pk_kv_clear(&s->fwd.kv);
    s->fwd.pos = 0;
    s->mark.marked = 0;
    memset(&s->presses.stats, 0, sizeof s->presses.stats);
    pk_press *attached = s->presses.attached;
    if (attached && attached->ops->restart) attached->ops->restart(attached);
    s->presses.attached = NULL;
    s->routing.table = NULL;
    pk_session_release(s);
    if (s->device.ops) s->device.ops->reset(s->device.engine);
}

/* The claimed press is being destroyed before the session let go of it:
 * forget it, and the decoding or routing it was doing. */
static void forget_press(void *owner, const pk_press *p)
{
    pikv_session *s = owner;
    if (s->presses.claimed != p) return;
    s->presses.claimed = NULL;
    if (s->presses.attached == p) s->presses.attached = NULL;
    s->routing.table = NULL;
}

int pk_session_claim(pikv_session *s, pk_press *p)
{
    if (!(p->caps & PK_PRESS_PER_RUN_STATE) || s->presses.claimed == p) return 0;
    pk_session_release(s);
    void *free_press = NULL;
    if (!atomic_compare_exchange_strong(&p->owner, &free_press, (void *)s))
        return pk_fail("press '%s' is in use by another session: a press that keeps per-run state (decoding, "
                       "moe_router) serves one session at a time; make one press per session",
                       p->name);
    p->forget = forget_press;
    s->presses.claimed = p;
    return 0;
}

void pk_session_release(pikv_session *s)
{
    if (!s->presses.claimed) return;
    atomic_store(&s->presses.claimed->owner, NULL);
    s->presses.claimed = NULL;
}

const pikv_model *pikv_session_model(const pikv_session *s)
{
    if (!s) pk_fail("pikv_session_model: session is NULL");
    return s ? s->model : NULL;
}

int pikv_session_threads(const pikv_session *s)
{
    return s ? s->fwd.n_threads : pk_fail("pikv_session_threads: session is NULL");
}

int pikv_session_position(const pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_position: session is NULL");
    return s->device.ops ? s->device.ops->position(s->device.engine) : s->fwd.pos;
}

size_t pikv_session_kv_bytes(const pikv_session *s)
{
    if (!s) {
        pk_fail("pikv_session_kv_bytes: session is NULL");
        return 0;
    }
    return s->device.ops ? s->device.ops->kv_bytes(s->device.engine) : pk_kv_bytes(&s->fwd.kv);
}

/* The storage types the cache was made with, for callers that build sessions
 * alike (pikv compare's KV-type sweep) or report them. */
int pikv_session_kv_types(const pikv_session *s, pikv_kv_type *type_k, pikv_kv_type *type_v)
{
    if (!s) return pk_fail("pikv_session_kv_types: session is NULL");
    const pikv_kv_type k = s->device.ops ? s->device.ops->kv_type(s->device.engine) : s->fwd.kv.type_k;
    const pikv_kv_type v = s->device.ops ? k : s->fwd.kv.type_v;
    if (type_k) *type_k = k;
    if (type_v) *type_v = v;
    return 0;
}

int pikv_session_kv_len(const pikv_session *s, int layer, int head)
{
    if (!s) return pk_fail("pikv_session_kv_len: session is NULL");
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    if (s->device.ops) return s->device.ops->kv_len(s->device.engine, layer, head);
    return pk_kv_head_at(&s->fwd.kv, layer, head)->len;
}

int pikv_session_kv_read(const pikv_session *s, int layer, int head, int values, float *out, int cap_rows)
{
    if (!s || (!out && cap_rows > 0)) return pk_fail("pikv_session_kv_read: session or output is NULL");
    if (pk_session_cpu_only(s, "pikv_session_kv_read")) return -1;
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    const pk_kv_head *h = pk_kv_head_at(&s->fwd.kv, layer, head);
    if (h->len > cap_rows) return pk_fail("KV cache: %d rows do not fit in %d", h->len, cap_rows);
    pk_kv_read(&s->fwd.kv, h, values, 0, h->len, out);
    return h->len;
}

int pikv_session_kv_positions(const pikv_session *s, int layer, int head, int32_t *out, int cap)
{
    if (!s || (!out && cap > 0)) return pk_fail("pikv_session_kv_positions: session or output is NULL");
    if (pk_session_cpu_only(s, "pikv_session_kv_positions")) return -1;
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    const pk_kv_head *h = pk_kv_head_at(&s->fwd.kv, layer, head);
    if (h->len > cap) return pk_fail("KV cache: %d positions do not fit in %d", h->len, cap);
    memcpy(out, h->pos, (size_t)h->len * sizeof *out);
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
    *st = s->presses.stats;
}

int pikv_session_mark(pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_mark: session is NULL");
    if (pk_session_cpu_only(s, "a session mark (pikv_session_mark)")) return -1;
    if (pk_kv_snapshot_take(&s->fwd.kv, &s->mark.snapshot)) return -1;
    s->mark.pos = s->fwd.pos;
    s->mark.epoch = s->fwd.kv.epoch;
    s->mark.marked = 1;
    return 0;
}

int pikv_session_rewind(pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_rewind: session is NULL");
    if (pk_session_cpu_only(s, "rewinding a session (pikv_session_rewind)")) return -1;
    if (!s->mark.marked) return pk_fail("session: rewind without a mark");
    if (s->fwd.kv.epoch != s->mark.epoch)
        return pk_fail("session: the cache was compressed after the mark, so it cannot be rewound");
    if (pk_kv_snapshot_restore(&s->fwd.kv, &s->mark.snapshot)) return -1;
    s->fwd.pos = s->mark.pos;
    return 0;
}

int pk_session_set_window(pikv_session *s, int layer, int head, int sink, int recent)
{
    if (pk_session_cpu_only(s, "a streaming window over a full cache (Duo calibration)")) return -1;
    const pikv_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return pk_fail("KV cache: no layer %d head %d", layer, head);
    return pk_kv_set_window(&s->fwd.kv, layer, head, sink, recent);
}

int pikv_session_set_workers(pikv_session *s, int workers, int balanced)
{
    if (!s) return pk_fail("pikv_session_set_workers: session is NULL");
    if (workers < 0 || workers > 1024) return pk_fail("workers: %d is out of range 0..1024", workers);
    if (workers > 1 && pk_session_cpu_only(s, "decode attention on placed workers")) return -1;
    pk_session_workers *w = &s->workers;
    pk_free(w->scores);
    pk_free(w->head_len);
    w->scores = NULL;
    w->head_len = NULL;
    w->workers = workers > 1 ? workers : 0;
    w->policy = balanced ? PK_PLACE_EPLB : PK_PLACE_EQUAL_COUNT;
    w->imbalance_sum = 0;
    w->imbalance_steps = 0;
    if (w->workers &&
        (!(w->scores = pk_malloc_array((size_t)workers * (size_t)s->model->cfg.n_positions, sizeof(float),
                                       "worker scores")) ||
         !(w->head_len = pk_malloc_array((size_t)s->model->cfg.n_head, sizeof(int), "worker placement")))) {
        w->workers = 0;
        return -1;
    }
    return 0;
}

double pikv_session_worker_imbalance(const pikv_session *s)
{
    if (!s) return pk_fail("pikv_session_worker_imbalance: session is NULL");
    return s->workers.imbalance_steps ? s->workers.imbalance_sum / (double)s->workers.imbalance_steps : 1.0;
}
