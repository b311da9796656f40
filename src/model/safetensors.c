#include "model/safetensors.h"
#include "util/error.h"
#include "util/file.h"
#include "util/half.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Headers beyond this are not plausible model headers; refuse them early rather
 * than attempting a huge JSON parse. */
#define MAX_HEADER_BYTES (100u << 20)

static const struct { const char *name; pk_dtype dt; size_t size; } dtypes[] = {
    {"F32", PK_DT_F32, 4}, {"F16", PK_DT_F16, 2}, {"BF16", PK_DT_BF16, 2},
    {"F64", PK_DT_F64, 8}, {"I64", PK_DT_I64, 8}, {"I32", PK_DT_I32, 4},
    {"I16", PK_DT_I16, 2}, {"I8", PK_DT_I8, 1},   {"U8", PK_DT_U8, 1},
    {"BOOL", PK_DT_BOOL, 1},
};

const char *pk_dtype_name(pk_dtype dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].dt == dt) return dtypes[i].name;
    return "?";
}

static size_t dtype_size(pk_dtype dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].dt == dt) return dtypes[i].size;
    return 0;
}

static int lookup_dtype(const char *name, pk_dtype *dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (strcmp(dtypes[i].name, name) == 0) { *dt = dtypes[i].dt; return 0; }
    return -1;
}

/* Read one header entry into t, checking dtype, shape and offsets against the
 * size of the data region. */
static int parse_entry(const cJSON *e, pk_st_tensor *t, size_t data_size, const char *path)
{
    const char *name = e->string;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return pk_fail("%s: tensor '%s': header entry needs dtype, shape and data_offsets", path, name);
    if (lookup_dtype(dt->valuestring, &t->dtype))
        return pk_fail("%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > PK_ST_MAX_DIMS)
        return pk_fail("%s: tensor '%s': %d dimensions (at most %d)", path, name, t->ndim, PK_ST_MAX_DIMS);
    size_t numel = 1;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        double v = cJSON_IsNumber(dim) ? dim->valuedouble : -1;
        if (v < 0 || v != floor(v) || v > 9.0e15)
            return pk_fail("%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, d);
        t->shape[d++] = (int64_t)v;
        if (v != 0 && numel > SIZE_MAX / (size_t)v)
            return pk_fail("%s: tensor '%s': shape overflows", path, name);
        numel *= (size_t)v;
    }
    t->numel = numel;
    if (cJSON_GetArraySize(offs) != 2)
        return pk_fail("%s: tensor '%s': data_offsets must be [begin, end]", path, name);
    double b = cJSON_IsNumber(cJSON_GetArrayItem(offs, 0)) ? cJSON_GetArrayItem(offs, 0)->valuedouble : -1;
    double en = cJSON_IsNumber(cJSON_GetArrayItem(offs, 1)) ? cJSON_GetArrayItem(offs, 1)->valuedouble : -1;
    if (b < 0 || en < b || b != floor(b) || en != floor(en))
        return pk_fail("%s: tensor '%s': bad data_offsets", path, name);
    if (en > (double)data_size)
        return pk_fail("%s: tensor '%s': data_offsets [%.0f, %.0f] run past the end of the data (%zu bytes)",
                       path, name, b, en, data_size);
    size_t esize = dtype_size(t->dtype);
    if (numel > SIZE_MAX / esize || (size_t)(en - b) != numel * esize)
        return pk_fail("%s: tensor '%s': %s shape needs %zu bytes but data_offsets span %.0f",
                       path, name, dt->valuestring, numel * esize, en - b);
    t->nbytes = (size_t)(en - b);
    t->data = (const uint8_t *)(uintptr_t)(size_t)b; /* relative until the caller rebases */
    return 0;
}

/* 1 when a JSON text escapes a NUL character ("\u0000") inside a string. cJSON
 * decodes it and the C string ends there, so "wte.weight\u0000x" would
 * silently read as "wte.weight". */
static int has_nul_escape(const char *text, size_t len)
{
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\0') return 1; /* a raw NUL byte truncates a name the same way */
        if (!in_string) {
            in_string = text[i] == '"';
        } else if (text[i] == '"') {
            in_string = 0;
        } else if (text[i] == '\\') {
            if (i + 5 < len && text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0) return 1;
            i++; /* whatever is escaped cannot end the string */
        }
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const pk_st_tensor *const *)a)->name, (*(const pk_st_tensor *const *)b)->name);
}

/* Refuse a header that names one tensor twice: which copy a lookup finds would
 * depend on the order of the index, so another tensor's weights could load. */
static int check_unique_names(const pk_safetensors *st, const char *path)
{
    const pk_st_tensor **sorted = pk_malloc_array((size_t)st->n_tensors, sizeof *sorted, "safetensors names");
    if (!sorted) return -1;
    for (int i = 0; i < st->n_tensors; i++) sorted[i] = &st->tensors[i];
    qsort(sorted, (size_t)st->n_tensors, sizeof *sorted, by_name);
    int rc = 0;
    for (int i = 1; i < st->n_tensors && !rc; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            rc = pk_fail("%s: tensor '%s' appears twice in the header", path, sorted[i]->name);
    pk_free(sorted);
    return rc;
}

static int by_offset(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const pk_st_tensor *)a)->data, y = (uintptr_t)((const pk_st_tensor *)b)->data;
    return (x > y) - (x < y);
}

int pk_st_parse(pk_safetensors *st, const uint8_t *buf, size_t size, const char *path)
{
    memset(st, 0, sizeof *st);
    if (size < 8) return pk_fail("%s: file too short for a safetensors header (%zu bytes)", path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > size - 8)
        return pk_fail("%s: header length %llu is larger than the file (%zu bytes)", path,
                       (unsigned long long)hlen, size);
    if (hlen > MAX_HEADER_BYTES) return pk_fail("%s: header of %llu bytes is implausibly large", path,
                                                (unsigned long long)hlen);
    if (has_nul_escape((const char *)buf + 8, (size_t)hlen))
        return pk_fail("%s: header has a name or string with an embedded NUL character (\\u0000)", path);
    cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!root) return pk_fail("%s: header is %s", path, pk_json_error_reason((const char *)buf + 8, (size_t)hlen));
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return pk_fail("%s: header is not a JSON object", path);
    }
    const uint8_t *data = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) n += strcmp(e->string, "__metadata__") != 0;
    st->path = pk_strdup(path, "safetensors path");
    st->tensors = pk_calloc((size_t)n, sizeof *st->tensors, "safetensors index");
    if (!st->path || !st->tensors) goto fail;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        pk_st_tensor *t = &st->tensors[st->n_tensors];
        if (parse_entry(e, t, data_size, path)) goto fail;
        if (!(t->name = pk_strdup(e->string, "tensor name"))) goto fail;
        st->n_tensors++;
    }
    if (check_unique_names(st, path)) goto fail;
    /* Overlap check on the sorted offsets, then make the pointers absolute. */
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, by_offset);
    const pk_st_tensor *prev = NULL; /* the last non-empty tensor: empty ones overlap nothing */
    for (int i = 0; i < st->n_tensors; i++) {
        const pk_st_tensor *t = &st->tensors[i];
        if (!t->nbytes) continue;
        if (prev && (uintptr_t)prev->data + prev->nbytes > (uintptr_t)t->data) {
            pk_fail("%s: tensors '%s' and '%s' overlap", path, prev->name, t->name);
            goto fail;
        }
        prev = t;
    }
    for (int i = 0; i < st->n_tensors; i++)
        st->tensors[i].data = data + (uintptr_t)st->tensors[i].data;
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    pk_st_close(st);
    return -1;
}

int pk_st_open(pk_safetensors *st, const char *path)
{
    memset(st, 0, sizeof *st);
    off_t st_size = 0;
    int fd = pk_open_regular(path, &st_size);
    if (fd < 0) return -1;
    size_t size = (size_t)st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED)
        return size ? pk_fail("%s: cannot map: %s", path, strerror(errno))
                    : pk_fail("%s: file is empty", path);
    if (pk_st_parse(st, map, size, path)) {
        munmap(map, size);
        return -1;
    }
    st->map = map;
    st->map_size = size;
    return 0;
}

void pk_st_close(pk_safetensors *st)
{
    for (int i = 0; i < st->n_tensors; i++) pk_free(st->tensors[i].name);
    pk_free(st->tensors);
    pk_free(st->path);
    if (st->map) munmap(st->map, st->map_size);
    memset(st, 0, sizeof *st);
}

const pk_st_tensor *pk_st_find(const pk_safetensors *st, const char *name)
{
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

int pk_st_to_f32(const pk_safetensors *st, const pk_st_tensor *t, float *out)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case PK_DT_F32: memcpy(out, p, t->numel * 4); return 0;
    case PK_DT_F64:
        for (size_t i = 0; i < t->numel; i++) { double d; memcpy(&d, p + 8 * i, 8); out[i] = (float)d; }
        return 0;
    case PK_DT_F16:
        for (size_t i = 0; i < t->numel; i++) out[i] = pk_f32_from_f16((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return 0;
    case PK_DT_BF16:
        for (size_t i = 0; i < t->numel; i++) out[i] = pk_f32_from_bf16((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return 0;
    default:
        return pk_fail("%s: tensor '%s' has dtype %s, expected a floating-point type", st->path, t->name,
                       pk_dtype_name(t->dtype));
    }
}
