#include "model/model.h"
#include "util/error.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

/* Read an integer field that must be present (or, with fallback != NULL, the
 * first of the alternative names that is). */
static int int_field(const cJSON *root, const char *path, const char *key, const char *alt, int min,
                     int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && alt) v = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!v) return pk_fail("%s: missing \"%s\"", path, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > 1e9)
        return pk_fail("%s: \"%s\" must be an integer >= %d", path, v->string, min);
    *out = (int)v->valuedouble;
    return 0;
}

/* Optional boolean with a default, as transformers' GPT2Config has it. */
static int bool_field(const cJSON *root, const char *path, const char *key, int dflt, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) { *out = dflt; return 0; }
    if (!cJSON_IsBool(v)) return pk_fail("%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Token ids may be absent, null, or (in some configs) a list; take the first. */
static int token_id_field(const cJSON *root, const char *path, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v || cJSON_IsNull(v)) { *out = -1; return 0; }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble) || v->valuedouble > 1e9)
        return pk_fail("%s: \"%s\" must be a non-negative integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

int pk_config_parse(const cJSON *root, const char *path, pikv_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(root)) return pk_fail("%s: not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "gpt2") != 0)
        return pk_fail("%s: model_type \"%s\" is not supported (only gpt2)", path, type->valuestring);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "gelu_new") != 0 &&
                                         strcmp(act->valuestring, "gelu_pytorch_tanh") != 0)))
        return pk_fail("%s: activation_function %s%s%s is not supported (gelu_new only)", path,
                       cJSON_IsString(act) ? "\"" : "", cJSON_IsString(act) ? act->valuestring : "(not a string)",
                       cJSON_IsString(act) ? "\"" : "");
    if (int_field(root, path, "n_layer", NULL, 1, &cfg->n_layer) ||
        int_field(root, path, "n_head", NULL, 1, &cfg->n_head) ||
        int_field(root, path, "n_embd", NULL, 1, &cfg->n_embd) ||
        int_field(root, path, "n_positions", "n_ctx", 1, &cfg->n_positions) ||
        int_field(root, path, "vocab_size", NULL, 1, &cfg->vocab_size))
        return -1;
    if (cfg->n_embd > (1 << 24) || cfg->n_layer > 4096 || cfg->n_positions > (1 << 24) || cfg->vocab_size > (1 << 24))
        return pk_fail("%s: n_embd %d, n_layer %d, n_positions %d or vocab_size %d is implausibly large", path,
                       cfg->n_embd, cfg->n_layer, cfg->n_positions, cfg->vocab_size);
    if (cfg->n_embd % cfg->n_head)
        return pk_fail("%s: n_embd %d is not a multiple of n_head %d", path, cfg->n_embd, cfg->n_head);
    cfg->head_dim = cfg->n_embd / cfg->n_head;
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (!inner || cJSON_IsNull(inner)) cfg->n_inner = 4 * cfg->n_embd;
    else if (int_field(root, path, "n_inner", NULL, 1, &cfg->n_inner)) return -1;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    cfg->layer_norm_epsilon = 1e-5f;
    if (eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0 && eps->valuedouble < 1) || !((float)eps->valuedouble > 0))
            return pk_fail("%s: \"layer_norm_epsilon\" must be a number in (0, 1)", path);
        cfg->layer_norm_epsilon = (float)eps->valuedouble;
    }
    if (bool_field(root, path, "scale_attn_weights", 1, &cfg->scale_attn_weights) ||
        bool_field(root, path, "scale_attn_by_inverse_layer_idx", 0, &cfg->scale_attn_by_inverse_layer_idx) ||
        token_id_field(root, path, "bos_token_id", &cfg->bos_token_id) ||
        token_id_field(root, path, "eos_token_id", &cfg->eos_token_id))
        return -1;
    return 0;
}

float pk_attention_scale(const pikv_config *c, int layer)
{
    float scale = c->scale_attn_weights ? 1.f / sqrtf((float)c->head_dim) : 1.f;
    return c->scale_attn_by_inverse_layer_idx ? scale / (float)(layer + 1) : scale;
}
