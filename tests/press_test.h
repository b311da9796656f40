/* For tests that drive presses below the public API (a press on hand-made
 * layers, its decision applied as the engine applies it): a synthetic cache and the view a press gets of it, and
 * presses built from their spec text. */
#ifndef PIKV_TESTS_PRESS_TEST_H
#define PIKV_TESTS_PRESS_TEST_H

#include "check.h"
#include "engine/compress.h"
#include "pikv.h"
#include "press/press.h"
#include "press/spec.h"

#include <stdlib.h>
#include <string.h>

/* One synthetic model's cache and the view a press gets of its layer 0. */
typedef struct {
    pikv_config cfg;
    pk_kvcache kv;
    float *q;
    pk_press_view view;
    pk_keep_set keep;
} test_layer;

/* n_layer x n_head heads of head_dim, each holding `len` zero entries at
 * positions 0..len-1; n_q zero query rows of q_stride floats, the first at
 * position q_pos0. The view looks at layer 0 with scale 1. */
static int test_layer_init(test_layer *t, int n_layer, int n_head, int head_dim, int len, int n_q, int q_pos0,
                           int q_stride)
{
    memset(t, 0, sizeof *t);
    t->cfg = (pikv_config){.n_layer = n_layer, .n_head = n_head, .head_dim = head_dim,
                           .n_embd = n_head * head_dim, .n_positions = 1024};
    if (pk_kv_init(&t->kv, n_layer, n_head, head_dim, PIKV_KV_F32, PIKV_KV_F32) || pk_kv_reserve(&t->kv, len, 1)) {
        pk_kv_free(&t->kv);
        return -1;
    }
    for (int i = 0; i < n_layer * n_head; i++) {
        pk_kv_head *kh = &t->kv.heads[i];
        if (len > 0) { /* an empty head has no arrays to clear */
            memset(kh->k, 0, (size_t)len * t->kv.row_k);
            memset(kh->v, 0, (size_t)len * t->kv.row_v);
        }
        for (int j = 0; j < len; j++) kh->pos[j] = j;
        kh->len = len;
    }
    t->q = calloc((size_t)(n_q > 0 ? n_q : 1) * (size_t)q_stride, sizeof *t->q);
    if (!t->q) {
        pk_kv_free(&t->kv);
        return -1;
    }
    t->view = (pk_press_view){.cfg = &t->cfg, .layer = 0, .q = t->q, .q_stride = q_stride, .n_q = n_q,
                              .q_pos0 = q_pos0, .kv = &t->kv, .backend = &pk_backend_cpu, .scale = 1.f};
    if (pk_keep_set_init(&t->keep, n_head)) {
        pk_kv_free(&t->kv);
        free(t->q);
        return -1;
    }
    return 0;
}

static void layer_free(test_layer *t)
{
    pk_kv_free(&t->kv);
    pk_keep_set_free(&t->keep);
    free(t->q);
    t->q = NULL;
}

/* The press of spec `text` (model may be NULL; pattern files are looked up in
 * the bundled model); NULL, with a failed check, when it does not build. */
static pk_press *press_from(const char *text, const pikv_model *model)
{
    pk_spec *spec = NULL;
    pk_press *press = NULL;
    pk_press_env env = {model, "models/pikv-ref-14m"};
    int rc = pk_spec_parse(text, &spec);
    if (rc == 0) rc = pk_press_build(spec, &env, &press);
    pk_spec_free(spec);
    CHECK(rc == 0 && press, "press '%s' should build: %s", text, pikv_last_error());
    return rc == 0 ? press : NULL;
}

/* Run a press on the view's layer as the engine does: it decides, the cache applies. */
static inline int layer_compress(pk_press *press, test_layer *t)
{
    return pk_compress_layer(press, &t->view, &t->kv, &t->keep);
}

/* One decoding step of a press that acts while generating, applied when it decides. */
static inline int layer_decode_step(pk_press *press, test_layer *t)
{
    if (pk_keep_set_reset(&t->keep, pk_kv_max_len(&t->kv, t->view.layer))) return -1;
    int rc = press->ops->decode_step(press, &t->view, &t->keep);
    return rc == 1 ? pk_kv_apply(&t->kv, t->view.layer, &t->keep) : rc;
}

#endif
