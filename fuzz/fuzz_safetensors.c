/* libFuzzer target: the safetensors parser on arbitrary bytes.
 *
 * pk_st_parse must accept or refuse any buffer without reading outside it; what
 * it accepts must describe tensors that lie inside the data region and agree
 * with their dtype and shape under unique names, and converting every floating
 * tensor to float32 must stay inside those bounds too. */
#include "fuzz.h"
#include "model/safetensors.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Convert every floating tensor of an accepted file, and every other tensor
 * must be refused by the conversion. */
static void convert_all(const pk_safetensors *st)
{
    for (int i = 0; i < st->n_tensors; i++) {
        const pk_st_tensor *t = &st->tensors[i];
        int floating = t->dtype == PK_DT_F32 || t->dtype == PK_DT_F16 || t->dtype == PK_DT_BF16 ||
                       t->dtype == PK_DT_F64;
        float *out = malloc(t->numel ? t->numel * sizeof *out : 1);
        FUZZ_ASSERT(out != NULL, "cannot allocate %zu floats", t->numel);
        pikv_clear_error();
        int rc = pk_st_to_f32(st, t, out);
        FUZZ_ASSERT(floating ? rc == 0 : rc != 0, "tensor '%s' of dtype %s: rc %d", t->name,
                    pk_dtype_name(t->dtype), rc);
        if (rc) fuzz_check_error();
        free(out);
    }
}

/* No two tensors that hold bytes may share any. */
static void check_no_overlap(const pk_safetensors *st)
{
    for (int i = 0; i < st->n_tensors; i++)
        for (int j = i + 1; j < st->n_tensors; j++) {
            const pk_st_tensor *a = &st->tensors[i], *b = &st->tensors[j];
            int disjoint = !a->nbytes || !b->nbytes || a->data + a->nbytes <= b->data ||
                           b->data + b->nbytes <= a->data;
            FUZZ_ASSERT(disjoint, "tensors '%s' and '%s' overlap", a->name, b->name);
        }
}

/* Parse the input as a whole safetensors file; check what an accepted file
 * claims, convert its tensors, and close it either way. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pk_safetensors st;
    pikv_clear_error();
    if (pk_st_parse(&st, data, size, "fuzz.safetensors") != 0) {
        fuzz_check_error();
        FUZZ_ASSERT(st.n_tensors == 0 && st.tensors == NULL, "a failed parse left %d tensors", st.n_tensors);
        pk_st_close(&st);
        return 0;
    }
    for (int i = 0; i < st.n_tensors; i++) {
        const pk_st_tensor *t = &st.tensors[i];
        FUZZ_ASSERT(t->data >= data + 8 && t->nbytes <= (size_t)(data + size - t->data),
                    "tensor '%s' lies outside the buffer", t->name);
        /* Names are unique, so a lookup finds this very tensor, not another one of the same name. */
        FUZZ_ASSERT(pk_st_find(&st, t->name) == t, "tensor '%s' is not the one found by its name", t->name);
    }
    check_no_overlap(&st);
    convert_all(&st);
    pk_st_close(&st);
    return 0;
}
