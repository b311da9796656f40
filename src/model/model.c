/* Loading a GPT-2 checkpoint from a Hugging Face model directory. */
#include "model/model.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { MAX_SHARDS = 256 };

/* The safetensors files of one checkpoint and, for sharded ones, which file
 * holds which tensor. */
typedef struct {
    pk_safetensors shards[MAX_SHARDS];
    int n_shards;
} checkpoint;

static void checkpoint_close(checkpoint *ck)
{
    for (int i = 0; i < ck->n_shards; i++) pk_st_close(&ck->shards[i]);
    ck->n_shards = 0;
}

/* Open model.safetensors, or every shard named by model.safetensors.index.json. */
static int checkpoint_open(checkpoint *ck, const char *dir)
{
    char path[1024];
    ck->n_shards = 0;
    if (pk_join_path(path, sizeof path, dir, "model.safetensors")) return -1;
    if (pk_file_exists(path)) {
        if (pk_st_open(&ck->shards[0], path)) return -1;
        ck->n_shards = 1;
        return 0;
    }
    if (pk_join_path(path, sizeof path, dir, "model.safetensors.index.json")) return -1;
    if (!pk_file_exists(path))
        return pk_fail("%s: no model.safetensors or model.safetensors.index.json in this directory", dir);
    cJSON *index = pk_read_json(path);
    if (!index) return -1;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(index);
        return pk_fail("%s: missing \"weight_map\" object", path);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            pk_fail("%s: weight_map entry '%s' must be a file name in the same directory", path, e->string);
            goto fail;
        }
        char shard[1024];
        if (pk_join_path(shard, sizeof shard, dir, e->valuestring)) goto fail;
        int seen = 0;
        for (int i = 0; i < ck->n_shards && !seen; i++) seen = strcmp(ck->shards[i].path, shard) == 0;
        if (seen) continue;
        if (ck->n_shards == MAX_SHARDS) {
            pk_fail("%s: more than %d shards", path, MAX_SHARDS);
            goto fail;
        }
        if (pk_st_open(&ck->shards[ck->n_shards], shard)) goto fail;
        ck->n_shards++;
    }
    cJSON_Delete(index);
    if (ck->n_shards == 0) return pk_fail("%s: weight_map is empty", path);
    return 0;
fail:
    cJSON_Delete(index);
    checkpoint_close(ck);
    return -1;
}

/* Find a tensor under its bare name or with the `transformer.` prefix that
 * GPT2LMHeadModel checkpoints use. */
static const pk_st_tensor *find_tensor(const checkpoint *ck, const char *name, const pk_safetensors **in)
{
    char prefixed[256];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", name);
    for (int i = 0; i < ck->n_shards; i++) {
        const pk_st_tensor *t = pk_st_find(&ck->shards[i], prefixed);
        if (!t) t = pk_st_find(&ck->shards[i], name);
        if (t) { *in = &ck->shards[i]; return t; }
    }
    return NULL;
}

/* Copy one named tensor into dst as float32 after checking its shape. */
static int load_tensor(const checkpoint *ck, const char *dir, const char *name, float *dst, int64_t d0,
                       int64_t d1, pikv_model_info *info)
{
    const pk_safetensors *st;
    const pk_st_tensor *t = find_tensor(ck, name, &st);
    if (!t) return pk_fail("%s: missing tensor '%s'", dir, name);
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

/* Load every weight the forward pass uses into one float32 allocation. */
static int load_weights(pikv_model *m, const checkpoint *ck, const char *dir)
{
    const pikv_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    const pk_safetensors *st;
    int untied = find_tensor(ck, "lm_head.weight", &st) != NULL;
    size_t per_layer = 4 * C + 3 * C * C + 3 * C + C * C + C + C * F + F + F * C + C;
    m->n_params = V * C + P * C + 2 * C + (size_t)c->n_layer * per_layer + (untied ? V * C : 0);
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
    if (!pk_file_exists(path)) {
        pk_fail("%s: not found (is '%s' a Hugging Face model directory?)", path, dir);
        return NULL;
    }
    cJSON *root = pk_read_json(path);
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

const pikv_config *pikv_model_config(const pikv_model *m) { return &m->cfg; }

void pikv_model_get_info(const pikv_model *m, pikv_model_info *info) { *info = m->info; }
