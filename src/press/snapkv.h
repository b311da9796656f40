/* SnapKV's scores, shared by snapkv and pyramidkv. */
#ifndef PIKV_PRESS_SNAPKV_H
#define PIKV_PRESS_SNAPKV_H

#include "press/press.h"

/* scores[h][j]: mean attention from the last `window` queries to entry j,
 * average-pooled over neighbouring entries (kernel wide, zero padding counted);
 * the window's own entries score +inf so they always stay. */
int pk_snapkv_scores(const pk_press_view *v, int window, int kernel, float **scores);

/* Read snapkv's window and kernel parameters (defaults 64 and 5). */
int pk_snapkv_params(const struct pk_spec *spec, int *window, int *kernel);

/* PyramidKV's budget for one layer: entries kept out of len, decreasing
 * linearly with depth, averaging len * (1 - ratio) over the layers. */
int pk_pyramid_budget(int len, double ratio, int window, double beta, int layer, int n_layer);

#endif
