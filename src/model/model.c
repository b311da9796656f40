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

/* One tensor the forward pass holds: its name and shape, where it goes (a
 * float32 array, or a matrix in the model's weight type), and once found, the
 * tensor and its file. */
typedef struct {
    char name[128];
    int64_t d0, d1;      /* d1 = 0: one dimension */
    float **vector;      /* the float32 destination, or NULL for a matrix */
    pk_matrix *matrix;
    int conv1d;          /* a layer's matrix, stored [in, out] (Hugging Face's Conv1D); else [out, in] */
    const pk_st_tensor *t;
    const pk_safetensors *st;
} part;

/* Find one part's tensor, check its shape and note its dtype in info. */
static int find_part(const checkpoint *ck, const char *dir, part *p, pikv_model_info *info)
{
    int found = find_tensor(ck, p->name, &p->t, &p->st);
    if (found < 0) return -1;
    if (found) return pk_fail("%s: missing tensor '%s'", dir, p->name);
    const pk_st_tensor *t = p->t;
    int ndim = p->d1 ? 2 : 1;
    if (t->ndim != ndim || t->shape[0] != p->d0 || (p->d1 && t->shape[1] != p->d1)) {
        char want[64], got[96] = "";
        snprintf(want, sizeof want, p->d1 ? "[%lld, %lld]" : "[%lld]", (long long)p->d0, (long long)p->d1);
        for (int i = 0, n = 0; i < t->ndim && n < (int)sizeof got - 24; i++)
            n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return pk_fail("%s: tensor '%s' has shape [%s], expected %s", p->st->path, t->name, got, want);
    }
    const char *dt = pk_dtype_name(t->dtype);
    if (!info->stored_dtype[0]) snprintf(info->stored_dtype, sizeof info->stored_dtype, "%s", dt);
    else if (strcmp(info->stored_dtype, dt) != 0) snprintf(info->stored_dtype, sizeof info->stored_dtype, "mixed");
    return 0;
}

/* Count the NaN and infinite values of a loaded tensor into info. */
static void count_nonfinite(const pk_matrix *w, size_t n, const char *name, pikv_model_info *info)
{
    float chunk[256];
    size_t bad = 0;
    for (size_t first = 0; first < n; first += 256) {
        const size_t k = n - first < 256 ? n - first : 256;
        pk_matrix_to_f32(w, first, k, chunk);
        for (size_t i = 0; i < k; i++) bad += !isfinite(chunk[i]);
    }
    if (bad && !info->nonfinite_weights)
        snprintf(info->first_nonfinite_tensor, sizeof info->first_nonfinite_tensor, "%s", name);
    info->nonfinite_weights += bad;
}

/* The parameters the forward pass holds, as float32 arrays and as matrix
 * elements, every product and sum checked: a config.json's dimensions are
 * untrusted, and a wrapped count would allocate too little for the tensors
 * copied in afterwards. */
static int count_params(const pikv_config *c, int untied, size_t *n_vectors, size_t *n_matrix)
{
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    size_t CC, CF, VC, PC, vec_layer = 0, mat_layer = 0, vec_all, mat_all, vec = 0, mat = 0, total;
    if (__builtin_mul_overflow(C, C, &CC) || __builtin_mul_overflow(C, F, &CF) || __builtin_mul_overflow(V, C, &VC) ||
        __builtin_mul_overflow(P, C, &PC))
        return -1;
    /* per layer: c_attn (3C*C), c_proj (C*C), c_fc and mlp c_proj (C*F each); 2 layer norms (4C) and the biases */
    size_t mat_terms[] = {CC, CC, CC, CC, CF, CF}, vec_terms[] = {4 * C, 3 * C, C, F, C};
    for (size_t i = 0; i < sizeof mat_terms / sizeof *mat_terms; i++)
        if (__builtin_add_overflow(mat_layer, mat_terms[i], &mat_layer)) return -1;
    for (size_t i = 0; i < sizeof vec_terms / sizeof *vec_terms; i++)
        if (__builtin_add_overflow(vec_layer, vec_terms[i], &vec_layer)) return -1;
    if (__builtin_mul_overflow(mat_layer, (size_t)c->n_layer, &mat_all) ||
        __builtin_mul_overflow(vec_layer, (size_t)c->n_layer, &vec_all))
        return -1;
    size_t mat_sum[] = {VC, untied ? VC : 0, mat_all}, vec_sum[] = {PC, 2 * C, vec_all};
    for (size_t i = 0; i < 3; i++)
        if (__builtin_add_overflow(mat, mat_sum[i], &mat) || __builtin_add_overflow(vec, vec_sum[i], &vec)) return -1;
    if (__builtin_add_overflow(vec, mat, &total) || total > SIZE_MAX / sizeof(float)) return -1;
    *n_vectors = vec;
    *n_matrix = mat;
    return 0;
}

/* Append one entry to the list of tensors to load; layer >= 0 prefixes the
 * name with "h.LAYER.". */
static void add_part(part *parts, int *n, int layer, const char *name, int64_t d0, int64_t d1, float **vector,
                     pk_matrix *matrix)
{
    part *p = &parts[(*n)++];
    *p = (part){.d0 = d0, .d1 = d1, .vector = vector, .matrix = matrix, .conv1d = matrix && layer >= 0};
    if (layer >= 0) snprintf(p->name, sizeof p->name, "h.%d.%s", layer, name);
    else snprintf(p->name, sizeof p->name, "%s", name);
}

/* The list of tensors to load, in the order they are read: wte, wpe, ln_f,
 * the LM head when untied, then each layer's. */
static part *list_parts(pikv_model *m, int untied, int *n_parts)
{
    const pikv_config *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_inner, V = c->vocab_size, P = c->n_positions;
    part *parts = pk_calloc(4 + (size_t)untied + 12 * (size_t)c->n_layer, sizeof *parts, "model tensor list");
    if (!parts) return NULL;
    int n = 0;
    add_part(parts, &n, -1, "wte.weight", V, C, NULL, &m->wte);
    add_part(parts, &n, -1, "wpe.weight", P, C, &m->wpe, NULL);
    add_part(parts, &n, -1, "ln_f.weight", C, 0, &m->ln_f_w, NULL);
    add_part(parts, &n, -1, "ln_f.bias", C, 0, &m->ln_f_b, NULL);
    if (untied) add_part(parts, &n, -1, "lm_head.weight", V, C, NULL, &m->lm_head);
    for (int l = 0; l < c->n_layer; l++) {
        pk_layer *L = &m->layers[l];
        add_part(parts, &n, l, "ln_1.weight", C, 0, &L->ln_1_w, NULL);
        add_part(parts, &n, l, "ln_1.bias", C, 0, &L->ln_1_b, NULL);
        add_part(parts, &n, l, "attn.c_attn.weight", C, 3 * C, NULL, &L->attn_w);
        add_part(parts, &n, l, "attn.c_attn.bias", 3 * C, 0, &L->attn_b, NULL);
        add_part(parts, &n, l, "attn.c_proj.weight", C, C, NULL, &L->attn_proj_w);
        add_part(parts, &n, l, "attn.c_proj.bias", C, 0, &L->attn_proj_b, NULL);
        add_part(parts, &n, l, "ln_2.weight", C, 0, &L->ln_2_w, NULL);
        add_part(parts, &n, l, "ln_2.bias", C, 0, &L->ln_2_b, NULL);
        add_part(parts, &n, l, "mlp.c_fc.weight", C, F, NULL, &L->fc_w);
        add_part(parts, &n, l, "mlp.c_fc.bias", F, 0, &L->fc_b, NULL);
        add_part(parts, &n, l, "mlp.c_proj.weight", F, C, NULL, &L->fc_proj_w);
        add_part(parts, &n, l, "mlp.c_proj.bias", C, 0, &L->fc_proj_b, NULL);
    }
    *n_parts = n;
    return parts;
}

/* The type the matrices are kept in: the one asked for, or for "as stored"
 * the checkpoint's own when all its tensors share F16, BF16 or F32, and
 * float32 otherwise (F64, or a mixture). */
static pk_dtype kept_type(pikv_weight_type wanted, const part *parts, int n_parts)
{
    switch (wanted) {
    case PIKV_WEIGHTS_F16: return PK_DT_F16;
    case PIKV_WEIGHTS_BF16: return PK_DT_BF16;
    case PIKV_WEIGHTS_F32: return PK_DT_F32;
    case PIKV_WEIGHTS_AS_STORED: break;
    }
    const pk_dtype stored = parts[0].t->dtype;
    for (int i = 1; i < n_parts; i++)
        if (parts[i].t->dtype != stored) return PK_DT_F32;
    return stored == PK_DT_F16 || stored == PK_DT_BF16 ? stored : PK_DT_F32;
}

/* Load every weight the forward pass uses: find and check every tensor
 * first, then convert each into its slice of the two allocations. */
static int load_weights(pikv_model *m, const checkpoint *ck, const char *dir, pikv_weight_type wanted)
{
    const pikv_config *c = &m->cfg;
    const pk_safetensors *st;
    const pk_st_tensor *lm_head;
    int untied = find_tensor(ck, "lm_head.weight", &lm_head, &st);
    if (untied < 0) return -1;
    untied = !untied;
    size_t n_vectors, n_matrix;
    if (count_params(c, untied, &n_vectors, &n_matrix))
        return pk_fail("%s: the weights of n_layer %d, n_embd %d, n_inner %d, vocab_size %d and n_positions %d "
                       "do not fit in memory's address space", dir, c->n_layer, c->n_embd, c->n_inner,
                       c->vocab_size, c->n_positions);
    m->n_params = n_vectors + n_matrix;
    m->layers = pk_calloc((size_t)c->n_layer, sizeof *m->layers, "model layers");
    if (!m->layers) return -1;
    int n_parts = 0, rc = -1;
    uint16_t *scratch = NULL; /* a 16-bit layer matrix is transposed through this on its way in */
    part *parts = list_parts(m, untied, &n_parts);
    if (!parts) return -1;
    pikv_model_info *info = &m->info;
    for (int i = 0; i < n_parts; i++)
        if (find_part(ck, dir, &parts[i], info)) goto done;
    m->weights = kept_type(wanted, parts, n_parts);
    const size_t elem = pk_matrix_elem_size(m->weights);
    m->vectors = pk_malloc_array(n_vectors, sizeof(float), "model weights");
    m->matrices = pk_malloc_array(n_matrix, elem, "model weight matrices");
    if (!m->vectors || !m->matrices) goto done;
    size_t widest = 0;
    for (int i = 0; i < n_parts; i++)
        if (parts[i].conv1d && parts[i].t->numel > widest) widest = parts[i].t->numel;
    if (m->weights != PK_DT_F32 && !(scratch = pk_malloc_array(widest, sizeof *scratch, "weight transpose")))
        goto done;
    float *vec = m->vectors;
    char *mat = m->matrices;
    for (int i = 0; i < n_parts; i++) {
        const part *p = &parts[i];
        const size_t n = p->t->numel;
        pk_matrix loaded;
        if (p->vector) {
            loaded = (pk_matrix){.data = vec, .type = PK_DT_F32};
            *p->vector = vec;
            if (pk_st_to_f32(p->st, p->t, vec)) goto done;
            vec += n;
        } else {
            loaded = (pk_matrix){mat, m->weights, p->conv1d ? PK_IN_MAJOR : PK_OUT_MAJOR};
            if (pk_st_convert(p->st, p->t, m->weights, mat)) goto done;
            /* 16-bit products read each output's weights contiguously
             * (model/matrix.h); float32 ones are OpenBLAS's, on the
             * checkpoint's order as always. */
            if (scratch && p->conv1d) {
                pk_matrix_transpose_half((uint16_t *)(void *)mat, (size_t)p->d0, (size_t)p->d1, scratch);
                loaded.layout = PK_OUT_MAJOR;
            }
            *p->matrix = loaded;
            mat += n * elem;
        }
        count_nonfinite(&loaded, n, p->t->name, info);
    }
    if (!untied) m->lm_head = m->wte;
    info->tied_lm_head = !untied;
    info->weight_bytes = n_vectors * sizeof(float) + n_matrix * elem;
    rc = 0;
done:
    pk_free(scratch);
    pk_free(parts);
    return rc;
}

pikv_model_params pikv_model_default_params(void) { return (pikv_model_params){.weights = PIKV_WEIGHTS_AS_STORED}; }

const char *pikv_weight_type_name(pikv_weight_type t)
{
    switch (t) {
    case PIKV_WEIGHTS_AS_STORED: return "stored";
    case PIKV_WEIGHTS_F32: return "f32";
    case PIKV_WEIGHTS_F16: return "f16";
    case PIKV_WEIGHTS_BF16: return "bf16";
    }
    return NULL;
}

pikv_model *pikv_model_load(const char *dir)
{
    pikv_model_params p = pikv_model_default_params();
    p.weights = PIKV_WEIGHTS_F32;
    return pikv_model_load_with_params(dir, &p);
}

pikv_model *pikv_model_load_with_params(const char *dir, const pikv_model_params *params)
{
    char path[1024];
    if (!params) {
        pk_fail("pikv_model_load_with_params: params is NULL");
        return NULL;
    }
    if (!pikv_weight_type_name(params->weights)) {
        pk_fail("pikv_model_load_with_params: weights %d is not a pikv_weight_type", (int)params->weights);
        return NULL;
    }
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
    rc = load_weights(m, &ck, dir, params->weights);
    for (int i = 0; i < ck.n_shards; i++) {
        m->info.file_bytes += ck.shards[i].map_size;
        m->info.n_tensors += ck.shards[i].n_tensors;
    }
    checkpoint_close(&ck);
    if (rc) { pikv_model_free(m); return NULL; }
    snprintf(m->info.dir, sizeof m->info.dir, "%s", dir);
    m->info.n_params = m->n_params;
    m->info.weight_type = m->weights == PK_DT_F16    ? PIKV_WEIGHTS_F16
                          : m->weights == PK_DT_BF16 ? PIKV_WEIGHTS_BF16
                                                     : PIKV_WEIGHTS_F32;
    return m;
}

void pikv_model_free(pikv_model *m)
{
    if (!m) return;
    pk_free(m->vectors);
    pk_free(m->matrices);
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
