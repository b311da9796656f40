/* Reading Hugging Face safetensors files.
 *
 * A file is an 8-byte little-endian header length, a JSON header mapping each
 * tensor name to {dtype, shape, data_offsets}, then the raw data. The file is
 * mapped read-only; every header field is validated before any byte of data is
 * trusted (offsets inside the data region, sizes that agree with dtype × shape,
 * no two tensors overlapping). */
#ifndef PIKV_MODEL_SAFETENSORS_H
#define PIKV_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

enum { PK_ST_MAX_DIMS = 8 };

typedef enum {
    PK_DT_F32, PK_DT_F16, PK_DT_BF16, PK_DT_F64,
    PK_DT_I64, PK_DT_I32, PK_DT_I16, PK_DT_I8, PK_DT_U8, PK_DT_BOOL,
} pk_dtype;

typedef struct {
    char *name;
    pk_dtype dtype;
    int ndim;
    int64_t shape[PK_ST_MAX_DIMS];
    size_t numel;
    const uint8_t *data;   /* inside the mapping */
    size_t nbytes;
} pk_st_tensor;

typedef struct {
    char *path;            /* for error messages */
    uint8_t *map;          /* whole file, read-only mapping (NULL when parsed from memory) */
    size_t map_size;
    pk_st_tensor *tensors;
    int n_tensors;
} pk_safetensors;

/* Map and validate a file. On failure the struct is left empty. */
int pk_st_open(pk_safetensors *st, const char *path);
/* Validate a buffer already in memory (the fuzzer's entry point); `path` only
 * names it in messages. The buffer must outlive st. */
int pk_st_parse(pk_safetensors *st, const uint8_t *buf, size_t size, const char *path);
void pk_st_close(pk_safetensors *st);

const pk_st_tensor *pk_st_find(const pk_safetensors *st, const char *name);
const char *pk_dtype_name(pk_dtype dt);
/* Convert a floating-point tensor (F32, F16, BF16, F64) to float32. */
int pk_st_to_f32(const pk_safetensors *st, const pk_st_tensor *t, float *out);
/* Convert it to `to` (F32, F16 or BF16: out holds numel elements of that
 * type), rounding to nearest even when `to` is narrower than the tensor. */
int pk_st_convert(const pk_safetensors *st, const pk_st_tensor *t, pk_dtype to, void *out);

#endif
