/* Loading a GPT-2 checkpoint from a Hugging Face model directory. */
#include "model/model.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { MAX_SHARDS = 256 };

/* The safetensors files of one checkpoint and, for sharded ones, the index's
 * weight_map that says which file holds which tensor. */
typedef struct {
    pk_safetensors shards[MAX_SHARDS];
    int n_shards;
    cJSON *index;              /* model.safetensors.index.json, NULL for one file */
    const cJSON *weight_map;   /* inside index */
    char index_path[1024];
} checkpoint;

static void checkpoint_close(checkpoint *ck)
{
    for (int i = 0; i < ck->n_shards; i++) pk_st_close(&ck->shards[i]);
    ck->n_shards = 0;
    cJSON_Delete(ck->index);
    ck->index = NULL;
    ck->weight_map = NULL;
}

/* Open model.safetensors, or every shard named by model.safetensors.index.json. */
static int checkpoint_open(checkpoint *ck, const char *dir)
{
    char path[1024];
    ck->n_shards = 0;
    ck->index = NULL;
    ck->weight_map = NULL;
    if (pk_join_path(path, sizeof path, dir, "model.safetensors")) return -1;
    if (pk_path_exists(path)) {
        if (pk_st_open(&ck->shards[0], path)) return -1;
        ck->n_shards = 1;
        return 0;
    }
    if (pk_join_path(ck->index_path, sizeof ck->index_path, dir, "model.safetensors.index.json")) return -1;
    if (!pk_path_exists(ck->index_path))
        return pk_fail("%s: no model.safetensors or model.safetensors.index.json in this directory", dir);
    ck->index = pk_read_json(ck->index_path, PK_MAX_JSON_BYTES);
    if (!ck->index) return -1;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(ck->index, "weight_map");
    if (!cJSON_IsObject(map)) {
        pk_fail("%s: missing \"weight_map\" object", ck->index_path);
        goto fail;
    }
    ck->weight_map = map;
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            pk_fail("%s: weight_map entry '%s' must be a file name in the same directory", ck->index_path, e->string);
            goto fail;
        }
        char shard[1024];
        if (pk_join_path(shard, sizeof shard, dir, e->valuestring)) goto fail;
        int seen = 0;
        for (int i = 0; i < ck->n_shards && !seen; i++) seen = strcmp(ck->shards[i].path, shard) == 0;
        if (seen) continue;
        if (ck->n_shards == MAX_SHARDS) {
            pk_fail("%s: more than %d shards", ck->index_path, MAX_SHARDS);
            goto fail;
        }
        if (pk_st_open(&ck->shards[ck->n_shards], shard)) goto fail;
        ck->n_shards++;
    }
    if (ck->n_shards == 0) {
        pk_fail("%s: weight_map is empty", ck->index_path);
        goto fail;
    }
    return 0;
fail:
    checkpoint_close(ck);
    return -1;
}

/* Find a tensor in the shard the index names for it, or in the one file. */
static int find_in(const checkpoint *ck, const char *name, const pk_st_tensor **t, const pk_safetensors **in)
{
    if (!ck->weight_map) {
        *t = pk_st_find(&ck->shards[0], name);
        *in = &ck->shards[0];
        return *t ? 0 : 1;
    }
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(ck->weight_map, name);
    if (!file) return 1;
    const char *base;
    for (int i = 0; i < ck->n_shards; i++) {
        base = strrchr(ck->shards[i].path, '/');
        base = base ? base + 1 : ck->shards[i].path;
        if (strcmp(base, file->valuestring) != 0) continue;
        *in = &ck->shards[i];
        *t = pk_st_find(*in, name);
        if (*t) return 0;
        return pk_fail("%s: weight_map puts tensor '%s' in %s, but that file does not hold it", ck->index_path, name,
                       file->valuestring);
    }
    return 1; /* not reached: every file the map names was opened */
}

/* Find a tensor under its bare name or with the `transformer.` prefix that
 * GPT2LMHeadModel checkpoints use: 0 found, 1 absent, -1 an error (the index
 * names a shard that lacks it). */
static int find_tensor(const checkpoint *ck, const char *name, const pk_st_tensor **t, const pk_safetensors **in)
{
    char prefixed[256];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", name);
    int rc = find_in(ck, prefixed, t, in);
    return rc == 1 ? find_in(ck, name, t, in) : rc;
}

/* Copy one named tensor into dst as float32 after checking its shape. */
static int load_tensor(const checkpoint *ck, const char *dir, const char *name, float *dst, int64_t d0,
                       int64_t d1, pikv_model_info *info)
{
    const pk_safetensors *st;
    const pk_st_tensor *t;
    int found = find_tensor(ck, name, &t, &st);
    if (found < 0) return -1;
    if (found) return pk_fail("%s: missing tensor '%s'", dir, name);
    int ndim = d1 ? 2 : 1;
    if (t->ndim != ndim || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        char want[64], got[96] = "";
        snprintf(want, sizeof want, d1 ? "[%lld, %lld]" : "[%lld]", (long long)d0, (long long)d1);
        for (int i = 0, n = 0; i < t->ndim && n < (int)sizeof got - 24; i++)
            n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return pk_fail("%s: tensor '%s' has shape [%s], expected %s", st->path, t->name, got, want);
    }
    const char *dt = pk_dtype_name(t->dtype);
    if (!info->stored_dtype[0]) snprintf(info->stored_dtype, sizeof info->stored_dtype, "%s", dt);
    else if (strcmp(info->stored_dtype, dt) != 0) snprintf(info->stored_dtype, sizeof info->stored_dtype, "mixed");
    if (pk_st_to_f32(st, t, dst)) return -1;
    size_t n = t->numel, bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(dst[i]);
    if (bad && !info->nonfinite_weights)
        snprintf(info->first_nonfinite_tensor, sizeof info->first_nonfinite_tensor, "%s", t->name);
    info->nonfinite_weights += bad;
    return 0;
}

/* Hand out consecutive slices of the one weight allocation. */
static float *take(float **cursor, size_t n)
{
    float *p = *cursor;
    *cursor += n;
    return p;
}

/* The number of float32 parameters the forward pass holds, every product and
 * sum checked: a config.json's dimensions are untrusted, and a wrapped count
 * would allocate too little for the tensors copied in afterwards. */
static int count_params(const pikv_config *c, int untied, size_t *out)
{
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    /* per layer: 2 layer norms (4C), c_attn (3C*C + 3C), c_proj (C*C + C), c_fc (C*F + F), mlp c_proj (F*C + C) */
    size_t CC, CF, VC, PC, layer_sum, all, total = 0;
    if (__builtin_mul_overflow(C, C, &CC) || __builtin_mul_overflow(C, F, &CF) || __builtin_mul_overflow(V, C, &VC) ||
        __builtin_mul_overflow(P, C, &PC))
        return -1;
    size_t layer_terms[] = {CC, CC, CC, CC, CF, CF, 4 * C, 3 * C, C, F, C};
    layer_sum = 0;
    for (size_t i = 0; i < sizeof layer_terms / sizeof *layer_terms; i++)
        if (__builtin_add_overflow(layer_sum, layer_terms[i], &layer_sum)) return -1;
    if (__builtin_mul_overflow(layer_sum, (size_t)c->n_layer, &all)) return -1;
    size_t terms[] = {VC, PC, 2 * C, all, untied ? VC : 0};
    for (size_t i = 0; i < sizeof terms / sizeof *terms; i++)
        if (__builtin_add_overflow(total, terms[i], &total)) return -1;
    if (total > SIZE_MAX / sizeof(float)) return -1;
    *out = total;
    return 0;
}

/* Load every weight the forward pass uses into one float32 allocation. */
static int load_weights(pikv_model *m, const checkpoint *ck, const char *dir)
{
    const pikv_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    const pk_safetensors *st;
    const pk_st_tensor *lm_head;
    int untied = find_tensor(ck, "lm_head.weight", &lm_head, &st);
    if (untied < 0) return -1;
    untied = !untied;
    if (count_params(c, untied, &m->n_params))
        return pk_fail("%s: the weights of n_layer %d, n_embd %d, n_inner %d, vocab_size %d and n_positions %d "
                       "do not fit in memory's address space", dir, c->n_layer, c->n_embd, c->n_inner,
                       c->vocab_size, c->n_positions);
    m->params = pk_malloc_array(m->n_params, sizeof(float), "model weights");
    m->layers = pk_calloc((size_t)c->n_layer, sizeof *m->layers, "model layers");
    if (!m->params || !m->layers) return -1;

    float *cur = m->params;
    pikv_model_info *info = &m->info;
    m->wte = take(&cur, V * C);
    m->wpe = take(&cur, P * C);
    m->ln_f_w = take(&cur, C);
    m->ln_f_b = take(&cur, C);
    if (load_tensor(ck, dir, "wte.weight", m->wte, (int64_t)V, (int64_t)C, info) ||
        load_tensor(ck, dir, "wpe.weight", m->wpe, (int64_t)P, (int64_t)C, info) ||
        load_tensor(ck, dir, "ln_f.weight", m->ln_f_w, (int64_t)C, 0, info) ||
        load_tensor(ck, dir, "ln_f.bias", m->ln_f_b, (int64_t)C, 0, info))
        return -1;
    m->lm_head = m->wte;
    if (untied) {
        m->lm_head = take(&cur, V * C);
        if (load_tensor(ck, dir, "lm_head.weight", m->lm_head, (int64_t)V, (int64_t)C, info)) return -1;
    }
    info->tied_lm_head = !untied;
    for (int l = 0; l < c->n_layer; l++) {
        pk_layer *L = &m->layers[l];
        struct { const char *name; float **dst; size_t d0, d1; } parts[] = {
            {"ln_1.weight", &L->ln_1_w, C, 0},          {"ln_1.bias", &L->ln_1_b, C, 0},
            {"attn.c_attn.weight", &L->attn_w, C, 3 * C}, {"attn.c_attn.bias", &L->attn_b, 3 * C, 0},
            {"attn.c_proj.weight", &L->attn_proj_w, C, C}, {"attn.c_proj.bias", &L->attn_proj_b, C, 0},
            {"ln_2.weight", &L->ln_2_w, C, 0},          {"ln_2.bias", &L->ln_2_b, C, 0},
            {"mlp.c_fc.weight", &L->fc_w, C, F},        {"mlp.c_fc.bias", &L->fc_b, F, 0},
            {"mlp.c_proj.weight", &L->fc_proj_w, F, C}, {"mlp.c_proj.bias", &L->fc_proj_b, C, 0},
        };
        for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
            char name[128];
            snprintf(name, sizeof name, "h.%d.%s", l, parts[i].name);
            *parts[i].dst = take(&cur, parts[i].d0 * (parts[i].d1 ? parts[i].d1 : 1));
            if (load_tensor(ck, dir, name, *parts[i].dst, (int64_t)parts[i].d0, (int64_t)parts[i].d1, info))
                return -1;
        }
    }
    return 0;
}

pikv_model *pikv_model_load(const char *dir)
{
    char path[1024];
    if (!dir || !*dir) {
        pk_fail("model directory: empty path");
        return NULL;
    }
    if (pk_join_path(path, sizeof path, dir, "config.json")) return NULL;
    if (!pk_path_exists(path)) {
        pk_fail("%s: not found (is '%s' a Hugging Face model directory?)", path, dir);
        return NULL;
    }
    cJSON *root = pk_read_json(path, PK_MAX_JSON_BYTES);
    if (!root) return NULL;
    pikv_model *m = pk_calloc(1, sizeof *m, "model");
    if (!m) { cJSON_Delete(root); return NULL; }
    int rc = pk_config_parse(root, path, &m->cfg);
    const cJSON *arch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "architectures"), 0);
    snprintf(m->info.architecture, sizeof m->info.architecture, "%s",
             cJSON_IsString(arch) ? arch->valuestring : "GPT2LMHeadModel");
    cJSON_Delete(root);
    if (rc) { pikv_model_free(m); return NULL; }

    checkpoint ck;
    if (checkpoint_open(&ck, dir)) { pikv_model_free(m); return NULL; }
    rc = load_weights(m, &ck, dir);
    for (int i = 0; i < ck.n_shards; i++) {
        m->info.file_bytes += ck.shards[i].map_size;
        m->info.n_tensors += ck.shards[i].n_tensors;
    }
    checkpoint_close(&ck);
    if (rc) { pikv_model_free(m); return NULL; }
    snprintf(m->info.dir, sizeof m->info.dir, "%s", dir);
    m->info.n_params = m->n_params;
    m->info.weight_bytes = m->n_params * sizeof(float);
    return m;
}

void pikv_model_free(pikv_model *m)
{
    if (!m) return;
    pk_free(m->params);
    pk_free(m->layers);
    pk_free(m);
}

const pikv_config *pikv_model_config(const pikv_model *m)
{
    if (!m) pk_fail("pikv_model_config: model is NULL");
    return m ? &m->cfg : NULL;
}

void pikv_model_get_info(const pikv_model *m, pikv_model_info *info)
{
    if (!info) return;
    if (!m) {
        memset(info, 0, sizeof *info);
        pk_fail("pikv_model_get_info: model is NULL");
        return;
    }
    *info = m->info;
}
