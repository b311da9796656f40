/* Running a press on one layer: the press decides (pk_press_select), the cache
 * applies the decision (pk_kv_apply). A composition's parts run one after the
 * other, each deciding on what the parts before it left. */
#ifndef PIKV_ENGINE_COMPRESS_H
#define PIKV_ENGINE_COMPRESS_H

#include "press/press.h"

/* Compress layer v->layer of kv (the cache the view reads) with the press;
 * keep is scratch, initialised for the model's heads. */
int pk_compress_layer(pk_press *p, const pk_press_view *v, pk_kvcache *kv, pk_keep_set *keep);

#endif
