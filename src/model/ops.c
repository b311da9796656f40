#include "model/ops.h"

#include <math.h>

void pk_layernorm(float *out, const float *x, const float *w, const float *b, int C, float eps)
{
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= (float)C;
    for (int i = 0; i < C; i++) {
        float d = x[i] - mean;
        var += d * d;
    }
    float rstd = 1.f / sqrtf(var / (float)C + eps);
    for (int i = 0; i < C; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

void pk_gelu(float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void pk_softmax(float *x, int n, float scale)
{
    float max = x[0];
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    float sum = 0.f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(scale * (x[i] - max));
        sum += x[i];
    }
    float inv = 1.f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

float pk_exp_shifted(float *x, int n, float scale, float max)
{
    float sum = 0.f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(scale * (x[i] - max));
        sum += x[i];
    }
    return sum;
}

void pk_add_bias(float *x, const float *b, int n_rows, int n_cols)
{
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < n_cols; c++) x[(size_t)r * (size_t)n_cols + (size_t)c] += b[c];
}

float pk_dot(const float *a, const float *b, int n)
{
    float s = 0.f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void pk_gather_scores(const pk_kvcache *kv, const pk_kv_head *kh, const int *idx, int n, const float *q,
                      float *scores)
{
    const int dim = kv->head_dim;
    if (!pk_kv_is_f32(kv, 0)) {
        for (int i = 0; i < n; i++) scores[i] = pk_kv_row_dot(kv->type_k, pk_kv_row(kv, kh, 0, idx[i]), q, dim);
        return;
    }
    const float *K = pk_kv_f32_rows(kh, 0);
    for (int i = 0; i < n; i++) scores[i] = pk_dot(q, K + (size_t)idx[i] * (size_t)dim, dim);
}

void pk_gather_weighted_sum(const pk_kvcache *kv, const pk_kv_head *kh, const int *idx, int n, const float *w,
                            float *out)
{
    const int dim = kv->head_dim;
    for (int d = 0; d < dim; d++) out[d] = 0.f;
    if (!pk_kv_is_f32(kv, 1)) {
        for (int i = 0; i < n; i++) pk_kv_row_axpy(kv->type_v, pk_kv_row(kv, kh, 1, idx[i]), w[i], out, dim);
        return;
    }
    const float *V = pk_kv_f32_rows(kh, 1);
    for (int i = 0; i < n; i++) {
        const float *v = V + (size_t)idx[i] * (size_t)dim;
        for (int d = 0; d < dim; d++) out[d] += w[i] * v[d];
    }
}
