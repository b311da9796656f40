/* The GPT-2 model in memory: hyper-parameters and float32 weights.
 *
 * All weights live in one allocation (`params`); the per-layer structs point
 * into it. Matrices keep Hugging Face's Conv1D layout, input-major:
 * y[T, out] = x[T, in] · W[in, out] + b[out]. */
#ifndef PIKV_MODEL_MODEL_H
#define PIKV_MODEL_MODEL_H

#include "pikv.h"

struct cJSON;

typedef struct {
    float *ln_1_w, *ln_1_b;        /* [C] */
    float *attn_w, *attn_b;        /* c_attn [C, 3C], [3C]: q | k | v columns */
    float *attn_proj_w, *attn_proj_b; /* c_proj [C, C], [C] */
    float *ln_2_w, *ln_2_b;        /* [C] */
    float *fc_w, *fc_b;            /* mlp.c_fc [C, F], [F] */
    float *fc_proj_w, *fc_proj_b;  /* mlp.c_proj [F, C], [C] */
} pk_layer;

struct pikv_model {
    pikv_config cfg;
    float *params;     /* the one allocation holding every weight */
    size_t n_params;
    float *wte;        /* [V, C] token embeddings */
    float *wpe;        /* [P, C] position embeddings */
    float *ln_f_w, *ln_f_b;
    float *lm_head;    /* [V, C]: wte when tied */
    pk_layer *layers;  /* [n_layer] */
    pikv_model_info info;
};

/* The factor attention scores of one layer are multiplied by: 1/sqrt(head_dim)
 * when scale_attn_weights, further divided by layer + 1 when
 * scale_attn_by_inverse_layer_idx. */
float pk_attention_scale(const pikv_config *c, int layer);

/* Parse a Hugging Face GPT-2 config.json (path only names it in errors). */
int pk_config_parse(const struct cJSON *root, const char *path, pikv_config *cfg);

#endif
