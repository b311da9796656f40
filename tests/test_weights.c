/* Weights kept in 16-bit types: the F16 and BF16 converters on hand-worked
 * values and on every code, the half products against a double-precision
 * reference of the converted weights on odd shapes, the choice of type at
 * load ("as stored", mixed), the bytes they take, and the forward pass with
 * F16 and BF16 weights against float32 weights on the fixtures and the
 * bundled model: logits close, greedy tokens equal. */
#include "check.h"
#include "model_test.h"
#include "model/matrix.h"
#include "model/safetensors.h"
#include "pikv.h"
#include "util/half.h"
#include "util/mem.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static const char *const MODEL = "models/pikv-ref-14m";
static char tmp[256];

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void check_f16_values(void)
{
    /* Widening: normal, subnormal, the extremes, signed zero, infinities, NaN. */
    CHECK(pk_f16_to_f32(0x3c00) == 1.f && pk_f16_to_f32(0xc000) == -2.f, "1 and -2");
    CHECK(pk_f16_to_f32(0x0001) == ldexpf(1, -24), "smallest subnormal is 2^-24");
    CHECK(pk_f16_to_f32(0x03ff) == ldexpf(1023, -24), "largest subnormal is 1023 * 2^-24");
    CHECK(pk_f16_to_f32(0x0400) == ldexpf(1, -14), "smallest normal is 2^-14");
    CHECK(pk_f16_to_f32(0x7bff) == 65504.f, "largest half is 65504");
    CHECK(bits(pk_f16_to_f32(0x8000)) == 0x80000000u, "-0 stays negative");
    CHECK(pk_f16_to_f32(0x7c00) == INFINITY && pk_f16_to_f32(0xfc00) == -INFINITY, "infinities");
    CHECK(isnan(pk_f16_to_f32(0x7e00)), "NaN");

    /* Narrowing rounds to nearest, ties to even. */
    CHECK(pk_f32_to_f16(1.f) == 0x3c00 && pk_f32_to_f16(-1.5f) == 0xbe00, "1 and -1.5");
    CHECK(pk_f32_to_f16(1.f + ldexpf(1, -11)) == 0x3c00, "1 + 2^-11 is a tie: to even 1");
    CHECK(pk_f32_to_f16(1.f + 3 * ldexpf(1, -11)) == 0x3c02, "1 + 3*2^-11 is a tie: to even 0x3c02");
    CHECK(pk_f32_to_f16(nextafterf(1.f + ldexpf(1, -11), 2)) == 0x3c01, "just past the tie rounds up");
    CHECK(pk_f32_to_f16(65504.f) == 0x7bff && pk_f32_to_f16(65519.f) == 0x7bff, "up to 65519 stays finite");
    CHECK(pk_f32_to_f16(65520.f) == 0x7c00 && pk_f32_to_f16(-1e10f) == 0xfc00, "65520 and beyond: infinity");
    CHECK(pk_f32_to_f16(INFINITY) == 0x7c00 && pk_f32_to_f16(-INFINITY) == 0xfc00, "infinities stay");
    const uint16_t nan = pk_f32_to_f16(NAN);
    CHECK((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0, "NaN stays NaN (0x%04x)", nan);
    CHECK(pk_f32_to_f16(ldexpf(1, -24)) == 0x0001, "2^-24 is the smallest subnormal");
    CHECK(pk_f32_to_f16(ldexpf(1, -25)) == 0x0000, "2^-25 is a tie: to even 0");
    CHECK(pk_f32_to_f16(nextafterf(ldexpf(1, -25), 1)) == 0x0001, "just past 2^-25 rounds up");
    CHECK(pk_f32_to_f16(3 * ldexpf(1, -25)) == 0x0002, "1.5 * 2^-24 is a tie: to even 2");
    CHECK(pk_f32_to_f16(ldexpf(1023.5f, -24)) == 0x0400, "1023.5 * 2^-24 ties up to the smallest normal");
    CHECK(pk_f32_to_f16(ldexpf(1, -14)) == 0x0400, "2^-14 is the smallest normal");
    CHECK(pk_f32_to_f16(-ldexpf(1, -30)) == 0x8000, "a tiny negative becomes -0");

    /* Every half but NaN survives the round trip. */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        bad += pk_f32_to_f16(pk_f16_to_f32((uint16_t)h)) != h;
    }
    CHECK(bad == 0, "%d halves do not survive float32 and back", bad);
}

static void check_bf16_values(void)
{
    CHECK(pk_bf16_to_f32(0x3f80) == 1.f && pk_bf16_to_f32(0xbf00) == -0.5f, "1 and -0.5");
    CHECK(pk_bf16_to_f32(0x0001) == ldexpf(1, -133), "a subnormal bf16 is exact");
    CHECK(pk_bf16_to_f32(0x7f80) == INFINITY && isnan(pk_bf16_to_f32(0x7fc0)), "infinity and NaN");
    CHECK(pk_f32_to_bf16(1.f) == 0x3f80, "1");
    CHECK(pk_f32_to_bf16(1.f + ldexpf(1, -8)) == 0x3f80, "1 + 2^-8 is a tie: to even 1");
    CHECK(pk_f32_to_bf16(1.f + 3 * ldexpf(1, -8)) == 0x3f82, "1 + 3*2^-8 is a tie: to even 0x3f82");
    CHECK(pk_f32_to_bf16(nextafterf(1.f + ldexpf(1, -8), 2)) == 0x3f81, "just past the tie rounds up");
    CHECK(pk_f32_to_bf16(FLT_MAX) == 0x7f80, "FLT_MAX rounds up to infinity");
    CHECK(pk_f32_to_bf16(-INFINITY) == 0xff80, "-infinity stays");
    const uint16_t nan = pk_f32_to_bf16(NAN);
    CHECK((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0, "NaN stays NaN (0x%04x)", nan);
    float sub;
    uint32_t u = 0x00008000u; /* halfway between bf16 0x0000 and 0x0001 */
    memcpy(&sub, &u, 4);
    CHECK(pk_f32_to_bf16(sub) == 0x0000, "a subnormal tie rounds to even 0");
    u = 0x00018000u;
    memcpy(&sub, &u, 4);
    CHECK(pk_f32_to_bf16(sub) == 0x0002, "a subnormal tie rounds to even 2");
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue;
        bad += pk_f32_to_bf16(pk_bf16_to_f32((uint16_t)h)) != h;
    }
    CHECK(bad == 0, "%d bfloat16 values do not survive float32 and back", bad);
}

/* The widening of a whole range (eight at a time where the build has F16C)
 * agrees bit for bit with the scalar converter on every 16-bit code. */
static void check_range_widening(void)
{
    static uint16_t codes[0x10000 + 5];
    static float wide[0x10000 + 5];
    for (uint32_t h = 0; h < 0x10000; h++) codes[h + 5] = (uint16_t)h;
    for (int type = 0; type < 2; type++) {
        const pk_matrix w = {.data = codes, .type = type ? PK_DT_BF16 : PK_DT_F16};
        pk_matrix_to_f32(&w, 5, 0x10000, wide); /* from an odd offset */
        int bad = 0;
        for (uint32_t h = 0; h < 0x10000; h++) {
            const float want = type ? pk_bf16_to_f32((uint16_t)h) : pk_f16_to_f32((uint16_t)h);
            bad += bits(wide[h]) != bits(want) && !(isnan(want) && isnan(wide[h]));
        }
        CHECK(bad == 0, "%s: %d codes widen differently over a range", type ? "BF16" : "F16", bad);
    }
}

/* A repeatable pseudo-random value in [-1, 1). */
static float noise(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*state >> 40) / (double)(1ull << 23) - 1.0);
}

/* One product through pk_matmul_half (W [out, in], the layout 16-bit
 * matrices are kept in) against a double-precision reference of the weights
 * as converted: |y - ref| within 1e-5 of the sum of the terms' magnitudes,
 * element by element. */
static void check_product(pk_dtype type, int T, int in, int out, int with_bias, float beta, int n_threads)
{
    uint64_t state = (uint64_t)(T * 7919 + in * 131 + out) ^ (uint64_t)type;
    const size_t nw = (size_t)in * (size_t)out;
    uint16_t *w16 = malloc(nw * sizeof *w16);
    float *x = malloc((size_t)T * in * sizeof *x), *y = malloc((size_t)T * out * sizeof *y);
    float *y0 = malloc((size_t)T * out * sizeof *y0), *bias = malloc((size_t)out * sizeof *bias);
    float *panels = malloc((size_t)n_threads * PK_PANEL_FLOATS * sizeof *panels);
    for (size_t i = 0; i < nw; i++) {
        const float v = noise(&state) * 4; /* some of them subnormal halves */
        const float scaled = i % 97 == 0 ? v * 1e-6f : v;
        w16[i] = type == PK_DT_F16 ? pk_f32_to_f16(scaled) : pk_f32_to_bf16(scaled);
    }
    for (int i = 0; i < T * in; i++) x[i] = noise(&state);
    for (int i = 0; i < out; i++) bias[i] = noise(&state);
    for (int i = 0; i < T * out; i++) y0[i] = beta != 0 ? noise(&state) : NAN; /* beta 0 must not read y */
    memcpy(y, y0, (size_t)T * out * sizeof *y);
    const pk_matrix W = {w16, type, PK_OUT_MAJOR};
    const pk_matmul_args a = {.y = y, .x = x, .W = &W, .bias = with_bias ? bias : NULL, .T = T, .in = in,
                              .out = out, .beta = beta, .panels = panels, .n_threads = n_threads};
    pk_matmul_half(&a);
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double ref = (beta != 0 ? y0[(size_t)t * out + o] : 0) + (with_bias ? bias[o] : 0), mag = fabs(ref);
            for (int i = 0; i < in; i++) {
                const size_t at = (size_t)o * in + i;
                const double w = type == PK_DT_F16 ? pk_f16_to_f32(w16[at]) : pk_bf16_to_f32(w16[at]);
                ref += (double)x[(size_t)t * in + i] * w;
                mag += fabs((double)x[(size_t)t * in + i] * w);
            }
            const double err = fabs(y[(size_t)t * out + o] - ref) / (mag > 0 ? mag : 1);
            worst = err > worst || isnan(err) ? err : worst;
        }
    CHECK(worst < 1e-5, "%s T=%d in=%d out=%d bias=%d beta=%g threads=%d: error %.3g of the magnitude",
          type == PK_DT_F16 ? "F16" : "BF16", T, in, out, with_bias, beta, n_threads, worst);
    free(w16), free(x), free(y), free(y0), free(bias), free(panels);
}

/* Shapes that are and are not multiples of the kernels' 8, 32 and 64, one to
 * a few rows (the matrix-vector kernel) and more (widened blocks and sgemm,
 * with inner dimensions past one block). */
static void check_products(void)
{
    static const int shapes[][3] = {
        {1, 1, 1},   {1, 37, 83}, {1, 64, 64},  {1, 45, 130}, {2, 300, 200}, {3, 45, 83},
        {4, 7, 5},   {5, 45, 83}, {9, 300, 270}, {20, 513, 77}, {64, 384, 1152},
    };
    for (int type = 0; type < 2; type++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            const pk_dtype dt = type ? PK_DT_BF16 : PK_DT_F16;
            check_product(dt, shapes[s][0], shapes[s][1], shapes[s][2], 1, 0.f, 2);
            check_product(dt, shapes[s][0], shapes[s][1], shapes[s][2], 0, 1.f, 3);
        }
    check_product(PK_DT_F16, 7, 50, 91, 1, 1.f, 1);
}

/* The loader's transpose of a 16-bit Conv1D matrix into [out, in], on shapes
 * that tiles of 64 do and do not divide: every element lands where it
 * should. */
static void check_transpose(void)
{
    static const size_t shapes[][2] = {{1, 1}, {64, 64}, {70, 130}, {129, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const size_t rows = shapes[s][0], cols = shapes[s][1];
        uint16_t *m = malloc(rows * cols * sizeof *m), *scratch = malloc(rows * cols * sizeof *scratch);
        for (size_t i = 0; i < rows * cols; i++) m[i] = (uint16_t)(i * 7919 % 65521);
        pk_matrix_transpose_half(m, rows, cols, scratch);
        size_t bad = 0;
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++) bad += m[c * rows + r] != (uint16_t)((r * cols + c) * 7919 % 65521);
        CHECK(bad == 0, "transpose of %zu x %zu: %zu elements misplaced", rows, cols, bad);
        free(m);
        free(scratch);
    }
}

static pikv_model *load_as(const char *dir, pikv_weight_type type)
{
    pikv_model_params p = pikv_model_default_params();
    p.weights = type;
    pikv_model *m = pikv_model_load_with_params(dir, &p);
    CHECK(m != NULL, "load %s as %s: %s", dir, pikv_weight_type_name(type), pikv_last_error());
    return m;
}

static pikv_weight_type type_of(const pikv_model *m)
{
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    return info.weight_type;
}

/* Logits of every row of a prompt and `n_greedy` greedy tokens after it. */
static int run(const pikv_model *m, const int32_t *ids, int T, float *logits, int n_greedy, int32_t *greedy)
{
    pikv_session *s = pikv_session_new(m, 2);
    if (!s) return -1;
    int rc = pikv_forward(s, ids, T, logits, 1);
    pikv_session_reset(s);
    pikv_generation gen;
    pikv_sampling sampling = {.greedy = 1};
    if (!rc && !(rc = pikv_generate(s, ids, T, n_greedy, &sampling, -1, &gen))) {
        memcpy(greedy, gen.ids, (size_t)n_greedy * sizeof *greedy);
        rc = gen.n_ids == n_greedy ? 0 : -1;
        pikv_free(gen.ids);
    }
    pikv_session_free(s);
    return rc;
}

/* The golden prompts of one model: F16 and BF16 weights against float32
 * weights, logits within `tol_f16` / `tol_bf16` relative L2 at every row, and
 * the same 24 greedy tokens. */
static void check_parity(const char *label, const char *dir, const char *golden_path, int n_prompts)
{
    enum { N_GREEDY = 24 };
    pk_safetensors g;
    if (pk_st_open(&g, golden_path)) {
        CHECK(0, "%s: %s", label, pikv_last_error());
        return;
    }
    pikv_model *f32 = pikv_model_load(dir), *f16 = load_as(dir, PIKV_WEIGHTS_F16), *bf16 = load_as(dir, PIKV_WEIGHTS_BF16);
    if (f32 && f16 && bf16) {
        CHECK(type_of(f32) == PIKV_WEIGHTS_F32 && type_of(f16) == PIKV_WEIGHTS_F16 &&
                  type_of(bf16) == PIKV_WEIGHTS_BF16, "%s: info names the types in memory", label);
        const int V = pikv_model_config(f32)->vocab_size;
        for (int p = 0; p < n_prompts; p++) {
            char name[32];
            snprintf(name, sizeof name, "ids_%d", p);
            const pk_st_tensor *ids = pk_st_find(&g, name);
            if (!ids) {
                CHECK(0, "%s: no %s in the golden file", label, name);
                continue;
            }
            const int T = (int)ids->numel;
            float *ref = malloc((size_t)T * V * sizeof *ref), *got = malloc((size_t)T * V * sizeof *got);
            int32_t ref_ids[N_GREEDY], got_ids[N_GREEDY];
            CHECK(run(f32, (const int32_t *)ids->data, T, ref, N_GREEDY, ref_ids) == 0, "%s: f32 run: %s", label,
                  pikv_last_error());
            const pikv_model *halves[] = {f16, bf16};
            const double tolerance[] = {1e-3, 1e-2};
            for (int h = 0; h < 2; h++) {
                CHECK(run(halves[h], (const int32_t *)ids->data, T, got, N_GREEDY, got_ids) == 0, "%s: run: %s",
                      label, pikv_last_error());
                double worst = 0;
                for (int t = 0; t < T; t++)
                    worst = fmax(worst, rel_l2(got + (size_t)t * V, ref + (size_t)t * V, (size_t)V));
                const char *type = h ? "bf16" : "f16";
                CHECK(worst < tolerance[h], "%s prompt %d (%d tokens), %s: logits relative L2 %.3g >= %g", label, p,
                      T, type, worst, tolerance[h]);
                CHECK(memcmp(got_ids, ref_ids, sizeof got_ids) == 0, "%s prompt %d, %s: greedy tokens differ", label,
                      p, type);
                printf("%s prompt %d (%d tokens), %s weights: logits relative L2 %.2e from f32\n", label, p, T, type,
                       worst);
            }
            free(ref);
            free(got);
        }
    }
    pikv_model_free(f32);
    pikv_model_free(f16);
    pikv_model_free(bf16);
    pk_st_close(&g);
}

/* Decoding token by token with F16 weights (the matrix-vector kernels)
 * gives the logits of one prefill (widened blocks and sgemm). */
static void check_decode_matches_prefill(void)
{
    pikv_model *m = load_as(MODEL, PIKV_WEIGHTS_F16);
    if (!m) return;
    pikv_session *s = pikv_session_new(m, 2);
    const double worst = decode_vs_prefill(s, pikv_model_config(m)->vocab_size, 40, 30);
    CHECK(worst >= 0 && worst < 1e-5, "f16 decode vs prefill: relative L2 error %.3g >= 1e-5", worst);
    pikv_session_free(s);
    pikv_model_free(m);
}

/* Bytes in memory: the matrices take half with 16-bit weights, the float32
 * rest (wpe, layer norms, biases) stays; the defaults load as stored. */
static void check_types_and_bytes(void)
{
    pikv_model *f32 = pikv_model_load(MODEL), *f16 = load_as(MODEL, PIKV_WEIGHTS_F16);
    pikv_model *bf16 = load_as(MODEL, PIKV_WEIGHTS_BF16), *stored = load_as(MODEL, PIKV_WEIGHTS_AS_STORED);
    if (f32 && f16 && bf16 && stored) {
        pikv_model_info a, b, c, d;
        pikv_model_get_info(f32, &a);
        pikv_model_get_info(f16, &b);
        pikv_model_get_info(bf16, &c);
        pikv_model_get_info(stored, &d);
        const pikv_config *cfg = pikv_model_config(f32);
        const size_t C = (size_t)cfg->n_embd, F = (size_t)cfg->n_inner;
        const size_t f32_part = (size_t)cfg->n_positions * C + 2 * C + (size_t)cfg->n_layer * (9 * C + F);
        CHECK(a.weight_bytes == 4 * a.n_params, "f32: %zu bytes for %zu parameters", a.weight_bytes, a.n_params);
        CHECK(b.weight_bytes == 4 * f32_part + 2 * (b.n_params - f32_part),
              "f16: %zu bytes: the matrices at 2 bytes, the rest at 4", b.weight_bytes);
        CHECK(c.weight_bytes == b.weight_bytes && b.n_params == a.n_params, "bf16 takes what f16 takes");
        CHECK(b.weight_bytes < 0.55 * a.weight_bytes, "f16 weights take %.3f of f32's bytes",
              (double)b.weight_bytes / (double)a.weight_bytes);
        printf("bundled model: %zu bytes of f32 weights, %zu of f16 (%.3f)\n", a.weight_bytes, b.weight_bytes,
               (double)b.weight_bytes / (double)a.weight_bytes);
        CHECK(d.weight_type == PIKV_WEIGHTS_F16 && strcmp(d.stored_dtype, "F16") == 0,
              "the bundled F16 checkpoint loads as F16 by default");
    }
    pikv_model_free(f32), pikv_model_free(f16), pikv_model_free(bf16), pikv_model_free(stored);

    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s/fixtures/tiny-gpt2", shared_dir());
    pikv_model *m = load_as(tiny, PIKV_WEIGHTS_AS_STORED);
    CHECK(m && type_of(m) == PIKV_WEIGHTS_BF16, "the BF16 tiny-gpt2 loads as BF16 by default");
    pikv_model_free(m);

    pikv_model_params p = pikv_model_default_params();
    CHECK(p.weights == PIKV_WEIGHTS_AS_STORED, "the default is as stored");
    CHECK(pikv_model_load_with_params(MODEL, NULL) == NULL && strstr(pikv_last_error(), "params is NULL"),
          "NULL params: %s", pikv_last_error());
    p.weights = (pikv_weight_type)42;
    CHECK(pikv_model_load_with_params(MODEL, &p) == NULL && strstr(pikv_last_error(), "42"),
          "a type outside the enum: %s", pikv_last_error());
    CHECK(strcmp(pikv_weight_type_name(PIKV_WEIGHTS_BF16), "bf16") == 0 && !pikv_weight_type_name(p.weights),
          "type names");
}

/* Copy a checkpoint with every tensor (or only those `as_f32` names) in F32:
 * F32 checkpoints load as F32 by default, mixed ones too. */
static void write_f32_copy(const pk_safetensors *src, const char *dir, int (*as_f32)(const char *))
{
    char path[512], header[65536];
    size_t hn = 0, off = 0;
    mkdir(dir, 0700);
    hn += (size_t)snprintf(header, sizeof header, "{");
    for (int i = 0; i < src->n_tensors; i++) {
        const pk_st_tensor *t = &src->tensors[i];
        const int widen = t->dtype == PK_DT_BF16 && (!as_f32 || as_f32(t->name));
        const size_t bytes = widen ? t->numel * 4 : t->nbytes;
        hn += (size_t)snprintf(header + hn, sizeof header - hn, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                               t->name, widen ? "F32" : pk_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            hn += (size_t)snprintf(header + hn, sizeof header - hn, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        hn += (size_t)snprintf(header + hn, sizeof header - hn, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    hn += (size_t)snprintf(header + hn, sizeof header - hn, "}");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t n = hn;
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, hn, f);
    for (int i = 0; i < src->n_tensors; i++) {
        const pk_st_tensor *t = &src->tensors[i];
        if (t->dtype == PK_DT_BF16 && (!as_f32 || as_f32(t->name))) {
            float *wide = malloc(t->numel * 4);
            pk_st_to_f32(src, t, wide);
            fwrite(wide, 4, t->numel, f);
            free(wide);
        } else {
            fwrite(t->data, 1, t->nbytes, f);
        }
    }
    fclose(f);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp %s/fixtures/tiny-gpt2/config.json %s/", shared_dir(), dir);
    CHECK(system(cmd) == 0, "copy config.json");
}

static int only_ln_f(const char *name) { return strncmp(name, "ln_f.", 5) == 0; }

static void check_stored_types(void)
{
    char src_path[512], dir[300];
    snprintf(src_path, sizeof src_path, "%s/fixtures/tiny-gpt2/model.safetensors", shared_dir());
    pk_safetensors src;
    if (pk_st_open(&src, src_path)) {
        CHECK(0, "%s", pikv_last_error());
        return;
    }
    snprintf(dir, sizeof dir, "%s/f32", tmp);
    write_f32_copy(&src, dir, NULL);
    pikv_model *m = load_as(dir, PIKV_WEIGHTS_AS_STORED);
    CHECK(m && type_of(m) == PIKV_WEIGHTS_F32, "an F32 checkpoint loads as F32 by default");
    pikv_model_free(m);
    snprintf(dir, sizeof dir, "%s/mixed", tmp);
    write_f32_copy(&src, dir, only_ln_f);
    m = load_as(dir, PIKV_WEIGHTS_AS_STORED);
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    CHECK(m && info.weight_type == PIKV_WEIGHTS_F32 && strcmp(info.stored_dtype, "mixed") == 0,
          "a mixed checkpoint loads as F32 by default");
    pikv_model_free(m);
    /* A failed allocation at any step of a 16-bit load is an error, and frees what it took. */
    int failures = 0;
    for (long n = 1; n < 200; n++) {
        pk_test_fail_alloc_after(n);
        pikv_model_params p = {.weights = PIKV_WEIGHTS_F16};
        m = pikv_model_load_with_params(dir, &p);
        pk_test_fail_alloc_after(0);
        if (m) {
            pikv_model_free(m);
            break;
        }
        failures += strstr(pikv_last_error(), "out of memory") != NULL;
    }
    CHECK(failures > 3, "allocation failures while loading are reported (%d)", failures);
    pk_st_close(&src);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/pikv-test-weights-XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    check_f16_values();
    check_bf16_values();
    check_range_widening();
    check_products();
    check_transpose();
    check_types_and_bytes();
    check_stored_types();
    check_decode_matches_prefill();
    char golden[512], tiny[512], tiny_golden[512];
    snprintf(golden, sizeof golden, "%s/fixtures/golden_shared.safetensors", shared_dir());
    snprintf(tiny, sizeof tiny, "%s/fixtures/tiny-gpt2", shared_dir());
    snprintf(tiny_golden, sizeof tiny_golden, "%s/fixtures/golden_tiny_gpt2.safetensors", shared_dir());
    check_parity("pikv-ref-14m", MODEL, golden, 6);
    check_parity("tiny-gpt2", tiny, tiny_golden, 2);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return check_done("weights");
}
