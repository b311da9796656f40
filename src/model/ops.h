/* Element-wise kernels of the forward pass. This file is compiled with
 * -ffast-math so that GCC vectorises expf/tanhf through glibc's libmvec; the
 * kernels never see infinities or NaNs they would need to preserve (masked
 * attention entries are skipped, not set to -inf). */
#ifndef PIKV_MODEL_OPS_H
#define PIKV_MODEL_OPS_H

#include "kv/kvcache.h"

#include <stddef.h>

/* out[C] = (x - mean) / sqrt(var + eps) * w + b, for one row. */
void pk_layernorm(float *out, const float *x, const float *w, const float *b, int C, float eps);
/* x = gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void pk_gelu(float *x, size_t n);
/* x[0..n) = softmax(scale * x) in place. */
void pk_softmax(float *x, int n, float scale);
/* x[i] = exp(scale * (x[i] - max)) for i < n; returns their sum (an
 * unnormalised softmax, for partial softmaxes that are merged later). */
float pk_exp_shifted(float *x, int n, float scale, float max);
/* x[r, :] += b for rows r < n_rows. */
void pk_add_bias(float *x, const float *b, int n_rows, int n_cols);
/* Dot product of two rows. */
float pk_dot(const float *a, const float *b, int n);
/* Attention over a gathered subset of a head's entries (routed attention), in
 * whatever type the cache stores: scores[i] = q · key(idx[i]), and
 * out[head_dim] = sum_i w[i] value(idx[i]). */
void pk_gather_scores(const pk_kvcache *kv, const pk_kv_head *kh, const int *idx, int n, const float *q,
                      float *scores);
void pk_gather_weighted_sum(const pk_kvcache *kv, const pk_kv_head *kh, const int *idx, int n, const float *w,
                            float *out);

#endif
