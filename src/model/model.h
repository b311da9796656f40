/* The GPT-2 model in memory: hyper-parameters and weights.
 *
 * The matrices (c_attn, c_proj, c_fc, the MLP's c_proj, wte and an untied LM
 * head) live in one allocation, in the model's weight type: float32, F16 or
 * BF16 (model/matrix.h). Everything else (wpe, the layer norms, the biases)
 * is float32, in a second allocation. The per-layer structs point into them.
 * Matrices keep Hugging Face's Conv1D layout, input-major:
 * y[T, out] = x[T, in] · W[in, out] + b[out]. */
#ifndef PIKV_MODEL_MODEL_H
#define PIKV_MODEL_MODEL_H

#include "model/matrix.h"
#include "pikv.h"

struct cJSON;

typedef struct {
    float *ln_1_w, *ln_1_b;        /* [C] */
    pk_matrix attn_w;              /* c_attn [C, 3C]: q | k | v columns */
    float *attn_b;                 /* [3C] */
    pk_matrix attn_proj_w;         /* c_proj [C, C] */
    float *attn_proj_b;            /* [C] */
    float *ln_2_w, *ln_2_b;        /* [C] */
    pk_matrix fc_w;                /* mlp.c_fc [C, F] */
    float *fc_b;                   /* [F] */
    pk_matrix fc_proj_w;           /* mlp.c_proj [F, C] */
    float *fc_proj_b;              /* [C] */
} pk_layer;

struct pikv_model {
    pikv_config cfg;
    void *matrices;    /* the allocation holding every matrix, elements of `weights` */
    float *vectors;    /* the allocation holding every float32 weight */
    pk_dtype weights;  /* PK_DT_F32, PK_DT_F16 or PK_DT_BF16 */
    size_t n_params;
    pk_matrix wte;     /* [V, C] token embeddings */
    float *wpe;        /* [P, C] position embeddings */
    float *ln_f_w, *ln_f_b;
    pk_matrix lm_head; /* [V, C]: wte's data when tied */
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
