/* KV cache types: hand-worked q8_0 and q4_0 blocks and f16/bf16 values,
 * attention over a stored cache against dense f32 attention over its decoded
 * entries (full and streaming heads, one row and a block of rows), presses
 * and budgets on the bundled model in every type, the bytes a type really
 * takes, and the names and shapes that are refused. */
#include "check.h"
#include "engine/session.h"
#include "eval/tasks.h"
#include "kv/kv_type.h"
#include "model/backend.h"
#include "pikv.h"
#include "press_test.h"
#include "util/half.h"

#include <string.h>

#define MODEL "models/pikv-ref-14m"

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* q8_0 with d = amax / 127 = 7.9375 / 127 = 0.0625 = 2^-4, exact in f16:
 * sign 0, exponent -4 + 15 = 11, mantissa 0 -> 11 << 10 = 0x2C00. Then
 * q = round(16 x), halves away from zero:
 *   7.9375 -> 127, -7.9375 -> -127, 0.15625 -> 2.5 -> 3, -0.15625 -> -3,
 *   0 -> 0, 1 -> 16, -0.5 -> -8, 0.03 -> 0.48 -> 0, 0.04 -> 0.64 -> 1,
 *   and (i - 16) / 16 -> i - 16 for i = 9..31.
 * Decoding gives q / 16: the same values, except 0.15625 -> 3/16 = 0.1875,
 * 0.03 -> 0 and 0.04 -> 0.0625. */
static void check_q8_0_block(void)
{
    float x[32] = {7.9375f, -7.9375f, 0.15625f, -0.15625f, 0, 1, -0.5f, 0.03f, 0.04f};
    for (int i = 9; i < 32; i++) x[i] = (float)(i - 16) / 16;
    const int8_t want_q[32] = {127, -127, 3, -3, 0, 16, -8, 0, 1, -7, -6, -5, -4, -3, -2, -1,
                               0,   1,    2, 3,  4, 5,  6,  7, 8, 9,  10, 11, 12, 13, 14, 15};
    pk_block_q8_0 b;
    pk_kv_quantize_row(PIKV_KV_Q8_0, x, &b, 32);
    CHECK(b.d == 0x2C00, "q8_0 scale 0x%04x, expected 0x2C00 (0.0625)", b.d);
    CHECK(memcmp(b.q, want_q, sizeof want_q) == 0, "q8_0 quants as worked out by hand");
    float back[32], expect[32];
    for (int i = 0; i < 32; i++) expect[i] = (float)want_q[i] / 16;
    pk_kv_dequantize_row(PIKV_KV_Q8_0, &b, back, 32);
    CHECK(memcmp(back, expect, sizeof back) == 0, "q8_0 decodes to q * 0.0625 exactly");
    pk_block_q8_0 again;
    pk_kv_quantize_row(PIKV_KV_Q8_0, back, &again, 32);
    CHECK(memcmp(&again, &b, sizeof b) == 0, "q8_0: the decoded block quantizes to the same bytes");
    float zeros[32] = {0};
    pk_kv_quantize_row(PIKV_KV_Q8_0, zeros, &b, 32);
    CHECK(b.d == 0 && b.q[0] == 0 && b.q[31] == 0, "q8_0 of zeros: scale 0, quants 0");
}

/* q4_0: the first value of largest magnitude is x[0] = 4 (x[1] = -4 ties and
 * does not replace it), so d = 4 / -8 = -0.5, in f16 sign 1, exponent
 * -1 + 15 = 14 -> 0xB800; 1/d = -2 and q = min(15, trunc(-2 x + 8.5)):
 *   4 -> 0.5 -> 0, -4 -> 16.5 -> 16 -> clamped to 15, 0.25 -> 8 -> 8,
 *   -0.25 -> 9 -> 9, 0 -> 8.5 -> 8, 1 -> 6.5 -> 6, -3.5 -> 15.5 -> 15,
 *   0.1 -> 8.3 -> 8, and for i = 8..31 x = (i % 8 - 4) / 2 in
 *   -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5 -> 12, 11, 10, 9, 8, 7, 6, 5.
 * Byte j holds element j in its low nibble and element 16 + j in its high
 * one: j = 0: 0 | 12 << 4 = 0xC0, j = 1: 15 | 11 << 4 = 0xBF, ... Decoding
 * gives (q - 8) * -0.5: -4 comes back as -3.5, 0.25 as 0, -0.25 as -0.5,
 * 0.1 as 0. */
static void check_q4_0_block(void)
{
    float x[32] = {4, -4, 0.25f, -0.25f, 0, 1, -3.5f, 0.1f};
    for (int i = 8; i < 32; i++) x[i] = (float)(i % 8 - 4) / 2;
    const uint8_t want_q[16] = {0xC0, 0xBF, 0xA8, 0x99, 0x88, 0x76, 0x6F, 0x58,
                                0xCC, 0xBB, 0xAA, 0x99, 0x88, 0x77, 0x66, 0x55};
    pk_block_q4_0 b;
    pk_kv_quantize_row(PIKV_KV_Q4_0, x, &b, 32);
    CHECK(b.d == 0xB800, "q4_0 scale 0x%04x, expected 0xB800 (-0.5)", b.d);
    CHECK(memcmp(b.q, want_q, sizeof want_q) == 0, "q4_0 nibbles as worked out by hand");
    float back[32], expect[32];
    for (int i = 0; i < 16; i++) {
        expect[i] = (float)((want_q[i] & 15) - 8) * -0.5f;
        expect[16 + i] = (float)((want_q[i] >> 4) - 8) * -0.5f;
    }
    pk_kv_dequantize_row(PIKV_KV_Q4_0, &b, back, 32);
    CHECK(memcmp(back, expect, sizeof back) == 0 && back[1] == -3.5f && back[2] == 0 && back[3] == -0.5f,
          "q4_0 decodes to (q - 8) * -0.5 exactly");
    pk_block_q4_0 again;
    pk_kv_quantize_row(PIKV_KV_Q4_0, back, &again, 32);
    CHECK(memcmp(&again, &b, sizeof b) == 0, "q4_0: the decoded block quantizes to the same bytes");
}

/* f16 and bf16 of chosen values, both ways. */
static void check_half_values(void)
{
    const struct {
        float x;
        uint16_t h;
        const char *why;
    } f16[] = {
        {1.0f, 0x3C00, "one"},
        {-2.0f, 0xC000, "minus two"},
        {65504.0f, 0x7BFF, "largest finite"},
        {65520.0f, 0x7C00, "halfway past the largest rounds (to even) to infinity"},
        {1.0f + 0x1p-11f, 0x3C00, "halfway between 1 and 1 + 2^-10: to even (1)"},
        {1.0f + 3 * 0x1p-11f, 0x3C02, "halfway between 1 + 2^-10 and 1 + 2^-9: to even"},
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3C01, "just over halfway rounds up"},
        {0x1p-14f, 0x0400, "smallest normal"},
        {0x1p-24f, 0x0001, "smallest subnormal"},
        {0x1p-25f, 0x0000, "half the smallest subnormal: to even (zero)"},
        {3 * 0x1p-25f, 0x0002, "one and a half subnormal units: to even (two)"},
        {1023 * 0x1p-24f, 0x03FF, "largest subnormal"},
        {-0.0f, 0x8000, "negative zero"},
    };
    for (size_t i = 0; i < sizeof f16 / sizeof *f16; i++)
        CHECK(pk_f32_to_f16(f16[i].x) == f16[i].h, "f16 of %.9g (%s): 0x%04x, expected 0x%04x", f16[i].x,
              f16[i].why, pk_f32_to_f16(f16[i].x), f16[i].h);
    const float exact[] = {1.0f, -2.0f, 65504.0f, 0x1p-14f, 0x1p-24f, 1023 * 0x1p-24f, -0.0f, 0.333251953125f};
    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++)
        CHECK(same_bits(pk_f16_to_f32(pk_f32_to_f16(exact[i])), exact[i]), "f16 round trip of %.9g", exact[i]);
    CHECK(signbit(pk_f16_to_f32(0x8000)) && pk_f16_to_f32(0x8000) == 0, "f16 negative zero stays negative");
    CHECK(isinf(pk_f16_to_f32(0x7C00)) && isnan(pk_f16_to_f32(pk_f32_to_f16(NAN))), "f16 infinity and NaN");

    const struct {
        float x;
        uint16_t b;
        const char *why;
    } bf16[] = {
        {1.0f, 0x3F80, "one"},
        {1.0f + 0x1p-8f, 0x3F80, "halfway between 1 and 1 + 2^-7: to even (1)"},
        {1.0f + 3 * 0x1p-8f, 0x3F82, "halfway between 1 + 2^-7 and 1 + 2^-6: to even"},
        {-0.0f, 0x8000, "negative zero"},
        {0x1p-133f, 0x0001, "a float subnormal that bf16 holds exactly"},
        {0x1p-134f, 0x0000, "half of it: to even (zero)"},
        {3 * 0x1p-134f, 0x0002, "one and a half units: to even (two)"},
    };
    for (size_t i = 0; i < sizeof bf16 / sizeof *bf16; i++)
        CHECK(pk_f32_to_bf16(bf16[i].x) == bf16[i].b, "bf16 of %.9g (%s): 0x%04x, expected 0x%04x", bf16[i].x,
              bf16[i].why, pk_f32_to_bf16(bf16[i].x), bf16[i].b);
    CHECK(same_bits(pk_bf16_to_f32(0x8000), -0.0f) && pk_bf16_to_f32(0x3F82) == 1.0f + 0x1p-6f,
          "bf16 decodes exactly");
    CHECK(isnan(pk_bf16_to_f32(pk_f32_to_bf16(NAN))), "bf16 NaN stays NaN");

    /* Whole rows go through the same conversions. */
    const float row[4] = {1.0f + 0x1p-11f, -0.0f, 0x1p-24f, 65520.0f};
    uint16_t h[4];
    pk_kv_quantize_row(PIKV_KV_F16, row, h, 4);
    CHECK(h[0] == 0x3C00 && h[1] == 0x8000 && h[2] == 0x0001 && h[3] == 0x7C00, "an f16 row");
    float back[4];
    pk_kv_dequantize_row(PIKV_KV_F16, h, back, 4);
    CHECK(back[0] == 1 && same_bits(back[1], -0.0f) && back[2] == 0x1p-24f && isinf(back[3]), "an f16 row back");
}

/* The codec's dot and axpy work on the decoded row. */
static void check_dot_axpy(void)
{
    float x[64], q[64], decoded[64];
    uint64_t rng = 7;
    for (int i = 0; i < 64; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((int)(rng >> 40) % 2001 - 1000) / 300;
        q[i] = (float)(i % 7) - 3;
    }
    for (int t = 0; t < PIKV_KV_N_TYPES; t++) {
        unsigned char row[256];
        pk_kv_quantize_row((pikv_kv_type)t, x, row, 64);
        pk_kv_dequantize_row((pikv_kv_type)t, row, decoded, 64);
        double dot = 0, err = 0;
        for (int i = 0; i < 64; i++) dot += (double)q[i] * decoded[i];
        float acc[64] = {0};
        pk_kv_row_axpy((pikv_kv_type)t, row, 2.f, acc, 64);
        for (int i = 0; i < 64; i++) err = fmax(err, fabs(acc[i] - 2 * decoded[i]));
        CHECK(fabs(pk_kv_row_dot((pikv_kv_type)t, row, q, 64) - dot) < 1e-4, "%s: dot of the decoded row",
              pikv_kv_type_name((pikv_kv_type)t));
        CHECK(err == 0, "%s: axpy of the decoded row", pikv_kv_type_name((pikv_kv_type)t));
    }
}

/* The products over a run of rows stored one after another, for every
 * type, against each row decoded: dims where the vector loops run (64, and
 * 48 for the 16-bit types) and where they do not (40). */
static void check_row_runs(void)
{
    enum { N = 5 };
    static const int dims[] = {64, 48, 40};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++)
        for (int t = 0; t < PIKV_KV_N_TYPES; t++) {
            const int dim = dims[d];
            if (pk_kv_type_check((pikv_kv_type)t, dim, "test rows")) continue;
            const size_t stride = pk_kv_row_bytes((pikv_kv_type)t, dim);
            unsigned char rows[N * 256];
            float x[64], q[64], a[N], decoded[N][64], dot[N], acc[64] = {0};
            uint64_t rng = 11 + (uint64_t)t;
            for (int j = 0; j < N; j++) {
                for (int i = 0; i < dim; i++) {
                    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                    x[i] = (float)((int)(rng >> 40) % 2001 - 1000) / 250;
                }
                pk_kv_quantize_row((pikv_kv_type)t, x, rows + j * stride, dim);
                pk_kv_dequantize_row((pikv_kv_type)t, rows + j * stride, decoded[j], dim);
                a[j] = 0.25f * (float)(j + 1);
            }
            for (int i = 0; i < dim; i++) q[i] = (float)(i % 5) - 2;
            pk_kv_rows_dot((pikv_kv_type)t, rows, N, q, dim, dot);
            pk_kv_rows_axpy((pikv_kv_type)t, rows, N, a, dim, acc);
            double dot_err = 0, axpy_err = 0;
            for (int j = 0; j < N; j++) {
                double ref = 0;
                for (int i = 0; i < dim; i++) ref += (double)q[i] * decoded[j][i];
                dot_err = fmax(dot_err, fabs(dot[j] - ref));
            }
            for (int i = 0; i < dim; i++) {
                double ref = 0;
                for (int j = 0; j < N; j++) ref += (double)a[j] * decoded[j][i];
                axpy_err = fmax(axpy_err, fabs(acc[i] - ref));
            }
            CHECK(dot_err < 1e-4 && axpy_err < 1e-4, "%s, dim %d: %d rows' dot off by %.3g, axpy by %.3g",
                  pikv_kv_type_name((pikv_kv_type)t), dim, N, dot_err, axpy_err);
        }
}

/* Bytes of a cache of every type: head_dim 64 is two blocks, so a q8_0 row
 * takes 2 x (2 + 32) = 68 bytes and a q4_0 row 2 x (2 + 16) = 36; f16 and
 * bf16 rows 64 x 2 = 128, f32 rows 256; each entry adds a 4-byte position. */
static void check_bytes(void)
{
    const size_t row[PIKV_KV_N_TYPES] = {256, 128, 128, 68, 36};
    for (int t = 0; t < PIKV_KV_N_TYPES; t++) {
        pk_kvcache kv;
        CHECK(pk_kv_init(&kv, 2, 3, 64, (pikv_kv_type)t, (pikv_kv_type)t) == 0 && pk_kv_reserve(&kv, 10, 1) == 0,
              "%s cache", pikv_kv_type_name((pikv_kv_type)t));
        CHECK(pk_kv_entry_bytes(&kv) == 2 * row[t] + 4, "%s: entry of %zu bytes", pikv_kv_type_name((pikv_kv_type)t),
              pk_kv_entry_bytes(&kv));
        CHECK(pk_kv_bytes(&kv) == 6 * 10 * (2 * row[t] + 4), "%s: %zu bytes for 6 heads of 10 entries",
              pikv_kv_type_name((pikv_kv_type)t), pk_kv_bytes(&kv));
        pk_kv_free(&kv);
    }
    pk_kvcache mixed;
    CHECK(pk_kv_init(&mixed, 1, 1, 64, PIKV_KV_Q8_0, PIKV_KV_F16) == 0 && pk_kv_reserve(&mixed, 5, 1) == 0 &&
              pk_kv_entry_bytes(&mixed) == 68 + 128 + 4 && pk_kv_bytes(&mixed) == 5 * 200,
          "q8_0 keys with f16 values: 200 bytes an entry");
    pk_kv_free(&mixed);
}

/* Unknown names and shapes a block type cannot hold are refused, naming what. */
static void check_refused(void)
{
    pikv_kv_type t = PIKV_KV_F32;
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
    for (int i = 0; i < PIKV_KV_N_TYPES; i++)
        CHECK(pikv_kv_type_from_name(names[i], &t) == 0 && t == (pikv_kv_type)i &&
                  strcmp(pikv_kv_type_name(t), names[i]) == 0,
              "name %s", names[i]);
    const char *bad[] = {"q5_0", "F16", "fp16", "", "q8_0 "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(pikv_kv_type_from_name(bad[i], &t) == -1 && strstr(pikv_last_error(), "unknown KV type") &&
                  strstr(pikv_last_error(), bad[i]),
              "'%s' refused: %s", bad[i], pikv_last_error());
    CHECK(pikv_kv_type_from_name(NULL, &t) == -1, "NULL name refused");
    CHECK(strcmp(pikv_kv_type_name((pikv_kv_type)99), "?") == 0, "a value outside the enum has no name");

    pk_kvcache kv;
    CHECK(pk_kv_init(&kv, 1, 1, 48, PIKV_KV_Q8_0, PIKV_KV_F32) == -1 && strstr(pikv_last_error(), "head_dim 48") &&
              strstr(pikv_last_error(), "q8_0"),
          "q8_0 keys with head_dim 48: %s", pikv_last_error());
    CHECK(pk_kv_init(&kv, 1, 1, 40, PIKV_KV_F16, PIKV_KV_Q4_0) == -1 && strstr(pikv_last_error(), "value") &&
              strstr(pikv_last_error(), "q4_0"),
          "q4_0 values with head_dim 40: %s", pikv_last_error());
    CHECK(pk_kv_init(&kv, 1, 1, 40, PIKV_KV_F16, PIKV_KV_BF16) == 0, "f16 / bf16 take any head_dim");
    pk_kv_free(&kv);
    CHECK(pk_kv_init(&kv, 1, 1, 64, (pikv_kv_type)PIKV_KV_N_TYPES, PIKV_KV_F32) == -1, "a type outside the enum");
}

/* ---- attention over a stored cache ---------------------------------------- */

enum { HD = 64, N_HEAD = 2, LEN = 150, N_POS = 256, THREADS = 2 };

static float uniform(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*rng >> 11) / 9007199254740992.0 * 2 - 1);
}

/* A one-layer cache of `type` holding LEN random entries per head. */
static int random_cache(pk_kvcache *kv, pikv_kv_type type, uint64_t seed)
{
    if (pk_kv_init(kv, 1, N_HEAD, HD, type, type) || pk_kv_reserve(kv, LEN, 1)) return -1;
    uint64_t rng = seed;
    float key[HD], value[HD];
    for (int h = 0; h < N_HEAD; h++) {
        pk_kv_head *kh = pk_kv_at(kv, 0, h);
        for (int j = 0; j < LEN; j++) {
            for (int d = 0; d < HD; d++) {
                key[d] = 2 * uniform(&rng);
                value[d] = uniform(&rng);
            }
            int slot = pk_kv_append_slot(kh, LEN);
            pk_kv_store(kv, kh, slot, key, value);
            kh->pos[slot] = j;
        }
    }
    return 0;
}

/* An f32 cache holding what every entry of src decodes to, in the same
 * slots, with the same positions and windows. */
static int decoded_copy(const pk_kvcache *src, pk_kvcache *dst)
{
    if (pk_kv_init(dst, 1, N_HEAD, HD, PIKV_KV_F32, PIKV_KV_F32) || pk_kv_reserve(dst, LEN, 1)) return -1;
    float key[HD], value[HD];
    for (int h = 0; h < N_HEAD; h++) {
        const pk_kv_head *s = pk_kv_head_at(src, 0, h);
        pk_kv_head *d = pk_kv_at(dst, 0, h);
        for (int j = 0; j < s->len; j++) {
            pk_kv_read(src, s, 0, j, 1, key);
            pk_kv_read(src, s, 1, j, 1, value);
            pk_kv_store(dst, d, j, key, value);
            d->pos[j] = s->pos[j];
        }
        d->len = s->len;
        d->sink = s->sink;
        d->recent = s->recent;
        d->evict = s->evict;
        d->ring = s->ring;
    }
    return 0;
}

/* The backend's attention of the last T entries' queries over a cache. */
static void attend(const pk_kvcache *kv, int T, const float *qkv, float *att)
{
    static float scores[THREADS * PK_QUERY_BLOCK * N_POS], rows[N_HEAD * 2 * N_POS * HD];
    const int len = pk_kv_head_at(kv, 0, 0)->len;
    pk_attention_args a = {.kv = kv, .layer = 0, .T = T, .pos0 = pk_kv_head_at(kv, 0, 0)->pos[len - 1] - T + 1,
                           .qkv = qkv, .att = att, .scale = 0.125f, .scores = scores,
                           .kv_rows = kv->type_k == PIKV_KV_F32 && kv->type_v == PIKV_KV_F32 ? NULL : rows,
                           .n_positions = N_POS, .n_threads = THREADS};
    pk_backend_cpu.attention(&a);
}

/* shape: 0 full heads, 1 streaming heads as a mask, 2 evicting streaming
 * heads (trimmed to sink + recent, one query into the full ring). */
static void check_attention(pikv_kv_type type, int shape, int T)
{
    const char *shapes[] = {"full", "masked streaming", "evicting streaming"};
    pk_kvcache stored, dense;
    float qkv[PK_QUERY_BLOCK * 2 * 3 * N_HEAD * HD], got[PK_QUERY_BLOCK * 2 * N_HEAD * HD],
        want[PK_QUERY_BLOCK * 2 * N_HEAD * HD];
    uint64_t rng = 99;
    for (size_t i = 0; i < sizeof qkv / sizeof *qkv; i++) qkv[i] = uniform(&rng);
    if (random_cache(&stored, type, 5 + (uint64_t)type)) {
        CHECK(0, "%s cache: %s", pikv_kv_type_name(type), pikv_last_error());
        return;
    }
    for (int h = 0; shape && h < N_HEAD; h++)
        pk_kv_make_streaming(&stored, 0, h, 4, 20 + 7 * h, shape == 2);
    CHECK(decoded_copy(&stored, &dense) == 0, "decoded copy: %s", pikv_last_error());
    attend(&stored, T, qkv, got);
    attend(&dense, T, qkv, want);
    double worst = 0;
    for (int i = 0; i < T * N_HEAD * HD; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    CHECK(worst <= 1e-5, "%s, %s heads, %d rows: attention off the dense f32 reference by %g",
          pikv_kv_type_name(type), shapes[shape], T, worst);
    pk_kv_free(&stored);
    pk_kv_free(&dense);
}

/* ---- presses --------------------------------------------------------------- */

enum { N_Q = 16 };

/* A press's view of layer 0 of a random cache of `type` (the test layer's own
 * cache swapped for it), with N_Q random query rows ending at the last entry. */
static int random_layer(test_layer *t, pikv_kv_type type, const pk_kvcache *decode_from)
{
    if (test_layer_init(t, 1, N_HEAD, HD, 0, N_Q, LEN - N_Q, N_HEAD * HD)) return -1;
    pk_kv_free(&t->kv);
    uint64_t rng = 3;
    for (int i = 0; i < N_Q * N_HEAD * HD; i++) t->q[i] = uniform(&rng);
    t->view.scale = 0.125f;
    return decode_from ? decoded_copy(decode_from, &t->kv) : random_cache(&t->kv, type, 11);
}

/* Press `spec`'s decision over a test layer, into its keep set. */
static int press_decides(const char *spec, test_layer *t)
{
    pk_press *p = press_from(spec, NULL);
    int rc = p && pk_keep_set_reset(&t->keep, LEN) == 0 ? pk_press_select(p, &t->view, &t->keep) : -1;
    pk_press_destroy(p);
    return rc;
}

/* A press over a cache of any type decides exactly as over an f32 cache
 * holding the entries it decodes to: presses read what attention reads. */
static void check_press_reads_decoded(pikv_kv_type type)
{
    const char *specs[] = {"knorm:0.4", "keydiff:0.4", "expected_attention:0.4", "snapkv:0.4,window=16",
                           "streaming_llm:0.4"};
    test_layer stored, dense;
    if (random_layer(&stored, type, NULL) || random_layer(&dense, PIKV_KV_F32, &stored.kv)) {
        CHECK(0, "%s layers: %s", pikv_kv_type_name(type), pikv_last_error());
        return;
    }
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        int same = press_decides(specs[i], &stored) == 0 && press_decides(specs[i], &dense) == 0;
        const pk_keep_set *a = &stored.keep, *b = &dense.keep;
        for (int h = 0; same && h < N_HEAD; h++)
            same = a->n_keep[h] == b->n_keep[h] && a->n_keep[h] == (int)(LEN * 0.6) &&
                   memcmp(a->keep[h], b->keep[h], (size_t)a->n_keep[h] * sizeof *a->keep[h]) == 0;
        CHECK(same, "%s over %s keeps what it keeps over the decoded f32 entries", specs[i],
              pikv_kv_type_name(type));
    }
    layer_free(&stored);
    layer_free(&dense);
}

/* ---- presses and budgets on the bundled model ----------------------------- */

static pikv_model *model;
static pikv_tokenizer *tok;
static pk_haystack haystack;

static pikv_session *session_of(pikv_kv_type k, pikv_kv_type v)
{
    pikv_session_params p = pikv_session_default_params();
    p.n_threads = 2;
    p.kv_type_k = k;
    p.kv_type_v = v;
    pikv_session *s = pikv_session_new_with_params(model, &p);
    CHECK(s != NULL, "session with %s keys, %s values: %s", pikv_kv_type_name(k), pikv_kv_type_name(v),
          pikv_last_error());
    return s;
}

/* Prefill the context with press `spec` into s (reset first). */
static int prefill_with(pikv_session *s, const char *spec, const pk_task *t)
{
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_session_reset(s);
    int rc = p ? pikv_prefill(s, t->context, t->n_context, p, NULL) : -1;
    CHECK(rc == 0, "%s: %s", spec, pikv_last_error());
    pikv_press_free(p);
    return rc;
}

/* The most entries one head of a holds that the same head of b does not
 * (0: every head holds the same positions), and in how many heads that
 * happens. */
static int entries_apart(const pikv_session *a, const pikv_session *b, int *heads)
{
    const pikv_config *c = pikv_model_config(model);
    int32_t pa[2048], pb[2048];
    int most = 0;
    *heads = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            int na = pikv_session_kv_positions(a, l, h, pa, 2048), nb = pikv_session_kv_positions(b, l, h, pb, 2048);
            int only_a = 0;
            for (int i = 0, j = 0; i < na; i++) { /* both ascending */
                while (j < nb && pb[j] < pa[i]) j++;
                only_a += j == nb || pb[j] != pa[i];
            }
            only_a += na != nb;
            *heads += only_a > 0;
            most = only_a > most ? only_a : most;
        }
    return most;
}

static const char *const presses[] = {"knorm:0.3", "snapkv:0.3", "expected_attention:0.3", "streaming_llm:0.3",
                                      "duo:ratio=0.5"};

/* Under f16 the presses keep the entries they keep under f32. The presses
 * that choose by position keep exactly the same ones. The scorers see keys
 * that f16 has moved by its rounding (and, through the layers below, by
 * their attention's), so where two entries' scores nearly tie at the cut
 * they may trade places: no head may differ by more than that one entry,
 * and few heads may differ at all. */
static void check_presses_f16(const pk_task *t)
{
    pikv_session *f32 = session_of(PIKV_KV_F32, PIKV_KV_F32), *f16 = session_of(PIKV_KV_F16, PIKV_KV_F16);
    const int n_heads = pikv_model_config(model)->n_layer * pikv_model_config(model)->n_head;
    for (size_t i = 0; f32 && f16 && i < sizeof presses / sizeof *presses; i++) {
        if (prefill_with(f32, presses[i], t) || prefill_with(f16, presses[i], t)) continue;
        const int by_position = strncmp(presses[i], "streaming_llm", 13) == 0 || strncmp(presses[i], "duo", 3) == 0;
        int heads, most = entries_apart(f32, f16, &heads);
        CHECK(by_position ? most == 0 : most <= 1 && heads <= n_heads / 6,
              "%s: %d heads keep other entries under f16 than under f32, at most %d of them", presses[i], heads,
              most);
    }
    pikv_session_free(f32);
    pikv_session_free(f16);
}

/* In every type each press keeps its budget, and the bytes are the kept
 * entries at that type's size. */
static void check_budgets(const pk_task *t)
{
    const pikv_config *c = pikv_model_config(model);
    const int L = t->n_context, kept = (int)(L * 0.7);
    for (int type = 0; type < PIKV_KV_N_TYPES; type++) {
        pikv_session *s = session_of((pikv_kv_type)type, (pikv_kv_type)type);
        if (!s) continue;
        const size_t entry = pk_kv_entry_bytes(&s->fwd.kv);
        for (size_t i = 0; i < sizeof presses / sizeof *presses; i++) {
            if (prefill_with(s, presses[i], t)) continue;
            const int duo = strncmp(presses[i], "duo", 3) == 0;
            int right = 1, streaming = 0;
            size_t entries = 0;
            for (int l = 0; l < c->n_layer; l++)
                for (int h = 0; h < c->n_head; h++) {
                    const pk_kv_head *kh = pk_kv_head_at(&s->fwd.kv, l, h);
                    streaming += kh->evict;
                    right &= kh->len == (duo ? (kh->evict ? 64 + 256 : L) : kept);
                    entries += (size_t)kh->len;
                }
            CHECK(right && (!duo || streaming == c->n_layer * c->n_head / 2), "%s under %s: budgets held",
                  presses[i], pikv_kv_type_name((pikv_kv_type)type));
            CHECK(pikv_session_kv_bytes(s) == entries * entry, "%s under %s: %zu bytes for %zu entries of %zu",
                  presses[i], pikv_kv_type_name((pikv_kv_type)type), pikv_session_kv_bytes(s), entries, entry);
        }
        pikv_session_free(s);
    }
}

/* A quantized session still answers: its logits stay close to f32's, and
 * q8_0 stays closer than q4_0. */
static void check_logits(const pk_task *t)
{
    const int V = pikv_model_config(model)->vocab_size;
    float *ref = malloc((size_t)V * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
    double err[PIKV_KV_N_TYPES] = {0};
    for (int type = 0; ref && got && type < PIKV_KV_N_TYPES; type++) {
        pikv_session *s = session_of((pikv_kv_type)type, (pikv_kv_type)type);
        if (!s) continue;
        CHECK(pikv_forward(s, t->context, t->n_context, NULL, 0) == 0 &&
                  pikv_forward(s, t->question, t->n_question, type ? got : ref, 0) == 0,
              "%s forward: %s", pikv_kv_type_name((pikv_kv_type)type), pikv_last_error());
        err[type] = type ? rel_l2(got, ref, (size_t)V) : 0;
        pikv_session_free(s);
    }
    CHECK(err[PIKV_KV_F16] < 1e-2 && err[PIKV_KV_BF16] < 5e-2 && err[PIKV_KV_Q8_0] < 5e-2 &&
              err[PIKV_KV_Q4_0] < 0.3 && err[PIKV_KV_Q8_0] < err[PIKV_KV_Q4_0],
          "logits against f32: f16 %.2g, bf16 %.2g, q8_0 %.2g, q4_0 %.2g", err[PIKV_KV_F16], err[PIKV_KV_BF16],
          err[PIKV_KV_Q8_0], err[PIKV_KV_Q4_0]);
    pikv_session_params bad = pikv_session_default_params();
    bad.kv_type_v = (pikv_kv_type)42;
    CHECK(!pikv_session_new_with_params(model, &bad) && strstr(pikv_last_error(), "value"),
          "a session with an unknown value type is refused: %s", pikv_last_error());
    free(ref);
    free(got);
}

int main(void)
{
    check_q8_0_block();
    check_q4_0_block();
    check_half_values();
    check_dot_axpy();
    check_row_runs();
    check_bytes();
    check_refused();
    for (int type = 0; type < PIKV_KV_N_TYPES; type++)
        for (int shape = 0; shape < 3; shape++) {
            check_attention((pikv_kv_type)type, shape, 1);
            if (shape < 2) check_attention((pikv_kv_type)type, shape, PK_QUERY_BLOCK + 9);
        }
    for (int type = 0; type < PIKV_KV_N_TYPES; type++) check_press_reads_decoded((pikv_kv_type)type);

    model = pikv_model_load(MODEL);
    tok = pikv_tokenizer_load(MODEL);
    if (!model || !tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        fprintf(stderr, "setup: %s\n", pikv_last_error());
        return 1;
    }
    pk_task t;
    if (pk_task_make(&haystack, PK_TASK_PASSKEY, 1, 600, 0.5, 1, &t)) {
        fprintf(stderr, "task: %s\n", pikv_last_error());
        return 1;
    }
    check_presses_f16(&t);
    check_budgets(&t);
    check_logits(&t);
    pk_task_free(&t);
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    return check_done("kv_types");
}
