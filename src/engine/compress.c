#include "engine/compress.h"
#include "util/error.h"

int pk_compress_layer(pk_press *p, const pk_press_view *v, pk_kvcache *kv, pk_keep_set *keep)
{
    if (v->kv != kv) return pk_fail("press '%s': the view reads another cache than the one to compress", p->name);
    if (p->caps & PK_PRESS_SEQUENCE) {
        for (int i = 0; i < p->n_inner; i++)
            if (pk_compress_layer(p->inner[i], v, kv, keep)) return -1;
        return 0;
    }
    if (pk_keep_set_reset(keep, pk_kv_max_len(kv, v->layer)) || pk_press_select(p, v, keep)) return -1;
    return pk_kv_apply(kv, v->layer, keep);
}
