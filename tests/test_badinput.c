/* Bad input, end to end: a small synthetic GPT-2 checkpoint that
 * this test writes, then cut, lied about and damaged in every way a file can
 * be; prompts past n_positions; malformed DuoAttention pattern files; the
 * tokenizer's in-memory loader; an allocation failure at every step of a
 * session, a forward pass, building a composite press and answering with one;
 * and the reproducers of what the fuzzers found. Every case must fail with an
 * error return and a one-line message that names the file or parameter at
 * fault, and (under `make test-asan`) without a leak or sanitizer report.
 *
 * What tests/test_loading.c and tests/test_tokenizer.c already cover (the
 * parser on hand-made headers, a few truncations, NaN counting, allocation
 * failures while loading a model or a tokenizer) is not repeated here. */
#include "check.h"
#include "util/mem.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "pikv.h"
#include "tokenizer/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The synthetic model (2 heads per layer): small enough to write, load and
 * run in milliseconds, with every tensor a GPT-2 checkpoint has. */
enum { N_LAYER = 2, N_EMBD = 16, N_VOCAB = 300, N_POSITIONS = 32, N_INNER = 4 * N_EMBD };

static const char synthetic_config[] =
    "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"], \"activation_function\": \"gelu_new\",\n"
    " \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 32, \"vocab_size\": 300,\n"
    " \"n_inner\": null, \"layer_norm_epsilon\": 1e-05, \"bos_token_id\": 0, \"eos_token_id\": 0}\n";

static char tmp[64];   /* this test's temporary directory */

/* ---- files ------------------------------------------------------------------ */

/* Write dir/name; a test that cannot write its inputs stops. */
static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* Write a text file (without its NUL). */
static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

/* A whole file in a malloc'd buffer, or NULL. */
static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) *len = (size_t)n;
    return buf;
}

/* A fresh subdirectory of the temporary directory; the path lives in a static
 * buffer until the next call. */
static const char *subdir(const char *name)
{
    static char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    mkdir(dir, 0700);
    return dir;
}

/* The last error is one line and contains needle (when given) and, when
 * given, also needle2: the file or flag at fault and the problem. */
static int one_line_naming(const char *needle, const char *needle2)
{
    const char *msg = pikv_last_error();
    return strchr(msg, '\n') == NULL && (!needle || strstr(msg, needle)) && (!needle2 || strstr(msg, needle2));
}

/* ---- the synthetic checkpoint -------------------------------------------- */

/* A tensor of the checkpoint: its name and its one or two dimensions. */
typedef struct {
    char name[48];
    int64_t shape[2];
    int ndim;
} tensor_entry;

/* The tensors of the synthetic model, in file order; returns their count. */
static int synthetic_tensors(tensor_entry *t)
{
    int n = 0;
#define ADD(d0, d1, ...)                                                        \
    do {                                                                        \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                     \
        t[n].shape[0] = (d0), t[n].shape[1] = (d1), t[n].ndim = (d1) ? 2 : 1;   \
        n++;                                                                    \
    } while (0)
    ADD(N_VOCAB, N_EMBD, "wte.weight");
    ADD(N_POSITIONS, N_EMBD, "wpe.weight");
    for (int l = 0; l < N_LAYER; l++) {
        ADD(N_EMBD, 0, "h.%d.ln_1.weight", l);
        ADD(N_EMBD, 0, "h.%d.ln_1.bias", l);
        ADD(N_EMBD, 3 * N_EMBD, "h.%d.attn.c_attn.weight", l);
        ADD(3 * N_EMBD, 0, "h.%d.attn.c_attn.bias", l);
        ADD(N_EMBD, N_EMBD, "h.%d.attn.c_proj.weight", l);
        ADD(N_EMBD, 0, "h.%d.attn.c_proj.bias", l);
        ADD(N_EMBD, 0, "h.%d.ln_2.weight", l);
        ADD(N_EMBD, 0, "h.%d.ln_2.bias", l);
        ADD(N_EMBD, N_INNER, "h.%d.mlp.c_fc.weight", l);
        ADD(N_INNER, 0, "h.%d.mlp.c_fc.bias", l);
        ADD(N_INNER, N_EMBD, "h.%d.mlp.c_proj.weight", l);
        ADD(N_EMBD, 0, "h.%d.mlp.c_proj.bias", l);
    }
    ADD(N_EMBD, 0, "ln_f.weight");
    ADD(N_EMBD, 0, "ln_f.bias");
#undef ADD
    return n;
}

/* Ways to damage one tensor of the checkpoint (NULL: none). */
typedef struct {
    const char *omit;        /* leave it out */
    const char *transpose;   /* store a matrix with its dimensions swapped (same bytes) */
    const char *as_i32;      /* label its bytes dtype I32 */
} damage;

/* The safetensors image of the synthetic model: float32 values in
 * [-0.1, 0.1) from a fixed generator. */
static uint8_t *checkpoint_image(const damage *dmg, size_t *size)
{
    tensor_entry t[64];
    int n = synthetic_tensors(t);
    size_t cap = 16384, hn = 0, data_bytes = 0;
    char *header = malloc(cap);
    hn += (size_t)snprintf(header + hn, cap - hn, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        if (dmg && dmg->omit && strcmp(t[i].name, dmg->omit) == 0) continue;
        int swap = dmg && dmg->transpose && strcmp(t[i].name, dmg->transpose) == 0;
        int as_int = dmg && dmg->as_i32 && strcmp(t[i].name, dmg->as_i32) == 0;
        size_t bytes = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1) * 4;
        char shape[48];
        if (t[i].ndim == 1) snprintf(shape, sizeof shape, "%lld", (long long)t[i].shape[0]);
        else snprintf(shape, sizeof shape, "%lld,%lld", (long long)t[i].shape[swap], (long long)t[i].shape[!swap]);
        hn += (size_t)snprintf(header + hn, cap - hn, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%zu,%zu]}",
                               t[i].name, as_int ? "I32" : "F32", shape, data_bytes, data_bytes + bytes);
        data_bytes += bytes;
    }
    hn += (size_t)snprintf(header + hn, cap - hn, "}");
    uint8_t *img = malloc(8 + hn + data_bytes);
    for (int i = 0; i < 8; i++) img[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    memcpy(img + 8, header, hn);
    free(header);
    uint32_t state = 12345;
    float *values = (float *)(void *)(img + 8 + hn);
    for (size_t i = 0; i < data_bytes / 4; i++) {
        state = state * 1664525u + 1013904223u;
        float v = (float)(state >> 8) / (float)(1 << 24) * 0.2f - 0.1f;
        memcpy(&values[i], &v, 4);
    }
    *size = 8 + hn + data_bytes;
    return img;
}

/* Write config.json and model.safetensors (damaged as asked) into dir. */
static void write_checkpoint(const char *dir, const damage *dmg)
{
    size_t size;
    uint8_t *img = checkpoint_image(dmg, &size);
    write_text(dir, "config.json", synthetic_config);
    write_file(dir, "model.safetensors", img, size);
    free(img);
}

/* Loading dir must fail with a one-line message naming needle and needle2. */
static void expect_load_error(const char *label, const char *dir, const char *needle, const char *needle2)
{
    pikv_clear_error();
    pikv_model *m = pikv_model_load(dir);
    CHECK(!m && one_line_naming(needle, needle2), "%s: want an error naming '%s' and '%s', got %s", label, needle,
          needle2 ? needle2 : "", m ? "a model" : pikv_last_error());
    pikv_model_free(m);
}

/* ---- checkpoints ------------------------------------------------------------ */

/* The undamaged synthetic model loads and runs: the cases below fail because of
 * what they change, not because the base is broken. */
static pikv_model *check_synthetic_model(const char *dir)
{
    write_checkpoint(dir, NULL);
    pikv_model *m = pikv_model_load(dir);
    CHECK(m != NULL, "the synthetic model does not load: %s", pikv_last_error());
    if (!m) return NULL;
    pikv_session *s = pikv_session_new(m, 1);
    const int32_t ids[4] = {1, 2, 299, 0};
    float logits[N_VOCAB];
    CHECK(s && pikv_forward(s, ids, 4, logits, 0) == 0, "the synthetic model does not run: %s", pikv_last_error());
    pikv_session_free(s);
    return m;
}

/* The checkpoint cut at every byte of its first 64, at every 1 KiB boundary
 * of header and data, and around the end of the header: each cut must be
 * refused with the file named. */
static void check_truncations(void)
{
    const char *dir = subdir("truncated");
    size_t size, cuts[256], n_cuts = 0;
    uint8_t *img = checkpoint_image(NULL, &size);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | img[i];
    for (size_t at = 0; at < 64; at++) cuts[n_cuts++] = at;
    for (size_t at = 1024; at < size && n_cuts < 250; at += 1024) cuts[n_cuts++] = at;
    cuts[n_cuts++] = 8 + (size_t)header_len - 1;
    cuts[n_cuts++] = 8 + (size_t)header_len;
    cuts[n_cuts++] = size - 1;
    CHECK(size > 40 * 1024 && header_len > 1024, "the synthetic checkpoint is too small to cut: %zu bytes", size);
    write_text(dir, "config.json", synthetic_config);
    for (size_t i = 0; i < n_cuts; i++) {
        write_file(dir, "model.safetensors", img, cuts[i]);
        pikv_clear_error();
        pikv_model *m = pikv_model_load(dir);
        CHECK(!m && one_line_naming("model.safetensors", NULL), "cut at byte %zu of %zu: %s", cuts[i], size,
              m ? "loaded" : pikv_last_error());
        pikv_model_free(m);
    }
    free(img);
}

/* A safetensors image with this header text and data_len zero bytes of data;
 * header_len_field replaces the length field when non-zero. */
static void write_image(const char *dir, const char *header, size_t data_len, uint64_t header_len_field)
{
    size_t hn = strlen(header);
    uint64_t field = header_len_field ? header_len_field : hn;
    uint8_t *img = calloc(1, 8 + hn + data_len);
    for (int i = 0; i < 8; i++) img[i] = (uint8_t)(field >> (8 * i));
    memcpy(img + 8, header, hn);
    write_file(dir, "model.safetensors", img, 8 + hn + data_len);
    free(img);
}

/* Headers that lie about the file, each written as the model's
 * model.safetensors: the loader must refuse it, naming the file and the lie. */
static void check_lying_headers(void)
{
    static const struct {
        const char *label, *header;
        size_t data_len;
        uint64_t header_len_field;
        const char *needle;
    } cases[] = {
        {"header length one past the file", "{}", 0, 3, "larger than the file"},
        {"header length 2^64 - 1", "{}", 16, UINT64_MAX, "larger than the file"},
        {"header of 200 MB declared", "{}", 16, 200u << 20, "larger than the file"},
        {"negative begin offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, 0,
         "bad data_offsets"},
        {"fractional offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0.5,4.5]}}", 8, 0,
         "bad data_offsets"},
        {"offsets as strings", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 8, 0,
         "bad data_offsets"},
        {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, 0,
         "must be [begin, end]"},
        {"end offset at 1e300", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 8, 0,
         "past the end"},
        {"end offset one past the data", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9],\"data_offsets\":[0,9]}}", 8, 0,
         "past the end"},
        {"one tensor inside another",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         16, 0, "overlap"},
        {"same range twice",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}",
         8, 0, "overlap"},
        {"shape product overflows",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8, 0,
         "shape overflows"},
        {"nine dimensions", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 8, 0,
         "dimensions"},
        {"fractional dimension", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 8, 0,
         "shape entry 0"},
        {"shape bytes disagree with offsets", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}",
         8, 0, "needs 8 bytes"},
        {"FP8, a dtype we do not read", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 8,
         0, "unknown dtype 'F8_E4M3'"},
        {"dtype not a string", "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 8, 0,
         "needs dtype, shape and data_offsets"},
        {"entry not an object", "{\"a\":[0,4]}", 8, 0, "needs dtype, shape and data_offsets"},
        {"header not JSON", "{\"a\":{\"dtype\":\"F32\",\"sha", 8, 0, "invalid JSON"},
        {"header a JSON string", "\"wte.weight\"", 8, 0, "not a JSON object"},
    };
    const char *dir = subdir("lying");
    write_text(dir, "config.json", synthetic_config);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_image(dir, cases[i].header, cases[i].data_len, cases[i].header_len_field);
        expect_load_error(cases[i].label, dir, "model.safetensors", cases[i].needle);
    }
}

/* Well-formed files whose tensors are not what the config says. */
static void check_wrong_tensors(void)
{
    static const struct {
        const char *label;
        damage dmg;
        const char *needle, *needle2;
    } cases[] = {
        {"missing tensor of the last layer", {.omit = "h.1.mlp.c_proj.bias"}, "missing tensor 'h.1.mlp.c_proj.bias'", NULL},
        {"missing token embeddings", {.omit = "wte.weight"}, "missing tensor 'wte.weight'", NULL},
        {"c_attn stored transposed", {.transpose = "h.0.attn.c_attn.weight"}, "'h.0.attn.c_attn.weight'",
         "has shape [48, 16], expected [16, 48]"},
        {"wpe stored transposed", {.transpose = "wpe.weight"}, "'wpe.weight'", "expected [32, 16]"},
        {"integer weights", {.as_i32 = "ln_f.weight"}, "'ln_f.weight'", "floating-point"},
    };
    const char *dir = subdir("wrong");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_checkpoint(dir, &cases[i].dmg);
        expect_load_error(cases[i].label, dir, cases[i].needle, cases[i].needle2);
    }
    /* A config.json that is not GPT-2's, or not complete, next to good weights. */
    write_checkpoint(dir, NULL);
    write_text(dir, "config.json", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 32}");
    expect_load_error("config without vocab_size", dir, "config.json", "\"vocab_size\"");
    write_text(dir, "config.json", "{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 32, "
                                   "\"vocab_size\": 300, \"activation_function\": \"relu\"}");
    expect_load_error("unsupported activation", dir, "config.json", "activation_function");
    write_text(dir, "config.json", "{\"n_layer\": 3, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 32, "
                                   "\"vocab_size\": 300}");
    expect_load_error("one layer more than the weights", dir, "missing tensor 'h.2.", NULL);
    write_text(dir, "config.json", "[]");
    expect_load_error("config.json an array", dir, "config.json", "not a JSON object");
}

/* ---- positions ---------------------------------------------------------------- */

/* Inputs past n_positions fail with the limit named and leave the session as it
 * was; generation and the pipeline check the limit before they start. */
static void check_position_limit(const pikv_model *m)
{
    int32_t ids[N_POSITIONS + 1];
    for (int i = 0; i <= N_POSITIONS; i++) ids[i] = (int32_t)(i * 7 % N_VOCAB);
    pikv_session *s = pikv_session_new(m, 1);
    if (!s) {
        CHECK(0, "session: %s", pikv_last_error());
        return;
    }
    CHECK(pikv_forward(s, ids, N_POSITIONS, NULL, 0) == 0, "exactly n_positions tokens: %s", pikv_last_error());
    pikv_session_reset(s);
    CHECK(pikv_forward(s, ids, N_POSITIONS + 1, NULL, 0) != 0 && one_line_naming("n_positions", NULL),
          "n_positions + 1 tokens: %s", pikv_last_error());
    pikv_session_reset(s);
    CHECK(pikv_forward(s, ids, 30, NULL, 0) == 0, "30 tokens: %s", pikv_last_error());
    CHECK(pikv_forward(s, ids, 3, NULL, 0) != 0 && one_line_naming("n_positions", NULL) &&
              pikv_session_position(s) == 30,
          "3 more tokens at position 30: %s (position %d)", pikv_last_error(), pikv_session_position(s));
    CHECK(pikv_forward(s, ids, 2, NULL, 0) == 0 && pikv_session_position(s) == N_POSITIONS,
          "the session still works after the refused input: %s", pikv_last_error());

    pikv_session_reset(s);
    pikv_sampling greedy = {.greedy = 1};
    pikv_generation gen;
    CHECK(pikv_generate(s, ids, 30, 4, &greedy, -1, &gen) != 0 && gen.ids == NULL &&
              one_line_naming("n_positions", NULL),
          "30 prompt tokens + 4 new: %s", pikv_last_error());

    pikv_session_reset(s);
    const int32_t *questions[1] = {ids};
    const int n_question[1] = {3};
    pikv_qa_request rq = {ids, 30, questions, n_question, 1, 1, -1, 0};
    pikv_qa_result res;
    pikv_press *press = pikv_press_new("knorm:0.5", m, NULL);
    CHECK(press && pikv_answer(s, press, &rq, &res) != 0 && one_line_naming("n_positions", NULL) &&
              res.answers == NULL && res.n_answers == 0,
          "context 30 + question 3 past n_positions: %s", pikv_last_error());
    pikv_press_free(press);
    pikv_session_free(s);
}

/* ---- DuoAttention pattern files ------------------------------------------- */

/* A pattern directory holding these files (NULL: the file is absent); the
 * gate file is tsv_len bytes long, or strlen(tsv) when tsv_len is 0. */
static const char *pattern_dir(const char *name, const char *tsv, size_t tsv_len, const char *config)
{
    const char *dir = subdir(name);
    char path[512];
    snprintf(path, sizeof path, "%s/full_attention_heads.tsv", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    if (tsv) write_file(dir, "full_attention_heads.tsv", tsv, tsv_len ? tsv_len : strlen(tsv));
    if (config) write_text(dir, "config.json", config);
    return dir;
}

/* A gate file with a NUL byte inside its last row. */
#define NUL_TSV "0.1\t0.9\n0.8\t0.2\0\n"

/* duo:pattern=DIR with malformed pattern files: each refused, the file named. */
static void check_duo_patterns(const pikv_model *m)
{
    static const char good_tsv[] = "0.1\t0.9\n0.8\t0.2\n", good_config[] = "{\"sink_size\": 4, \"recent_size\": 8}";
    static const struct {
        const char *label, *tsv;
        size_t tsv_len;
        const char *config, *needle;
    } cases[] = {
        {"ragged rows", "0.1\t0.9\n0.8\n", 0, good_config, "full_attention_heads.tsv"},
        {"more layers than the model", "0.1\t0.9\n0.8\t0.2\n0.5\t0.5\n", 0, good_config, "full_attention_heads.tsv"},
        {"more heads than the model", "0.1\t0.9\t0.3\n0.8\t0.2\t0.3\n", 0, good_config, "full_attention_heads.tsv"},
        {"a word for a gate", "0.1\tzero\n0.8\t0.2\n", 0, good_config, "full_attention_heads.tsv"},
        {"a NaN gate", "nan\t0.9\n0.8\t0.2\n", 0, good_config, "full_attention_heads.tsv"},
        {"an empty file", "", 0, good_config, "full_attention_heads.tsv"},
        {"a NUL byte", NUL_TSV, sizeof NUL_TSV - 1, good_config, "full_attention_heads.tsv"},
        {"no gate file", NULL, 0, good_config, "full_attention_heads.tsv"},
        {"no config.json", good_tsv, 0, NULL, "config.json"},
        {"config.json without recent_size", good_tsv, 0, "{\"sink_size\": 4}", "recent_size"},
        {"negative sink", good_tsv, 0, "{\"sink_size\": -1, \"recent_size\": 8}", "sink_size"},
        {"config.json not JSON", good_tsv, 0, "{\"sink_size\": 4,", "config.json"},
    };
    char spec[512];
    snprintf(spec, sizeof spec, "duo:0.5,pattern=%s", pattern_dir("duo-good", good_tsv, 0, good_config));
    pikv_press *p = pikv_press_new(spec, m, NULL);
    CHECK(p != NULL, "a well-formed pattern: %s", pikv_last_error());
    pikv_press_free(p);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[32];
        snprintf(name, sizeof name, "duo-%zu", i);
        snprintf(spec, sizeof spec, "duo:0.5,pattern=%s", pattern_dir(name, cases[i].tsv, cases[i].tsv_len, cases[i].config));
        pikv_clear_error();
        p = pikv_press_new(spec, m, NULL);
        CHECK(!p && one_line_naming(cases[i].needle, NULL), "duo pattern, %s: want an error naming '%s', got %s",
              cases[i].label, cases[i].needle, p ? "a press" : pikv_last_error());
        pikv_press_free(p);
    }
}

/* ---- the tokenizer from memory ------------------------------------------- */

/* pk_tokenizer_from_buffers gives the same ids as loading the directory, and
 * names the file at fault when a buffer is wrong or missing. */
static void check_tokenizer_buffers(void)
{
    const char *dir = "models/pikv-ref-14m";
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"};
    char *data[4];
    size_t len[4] = {0};
    pk_tokenizer_file files[4];
    for (int i = 0; i < 4; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        data[i] = read_whole(path, &len[i]);
        files[i] = (pk_tokenizer_file){names[i], data[i], len[i]};
    }
    pikv_tokenizer *from_dir = pikv_tokenizer_load(dir), *from_memory = pk_tokenizer_from_buffers(files, 4);
    CHECK(data[0] && data[1] && from_dir && from_memory, "tokenizer from memory: %s", pikv_last_error());
    if (from_dir && from_memory) {
        const char *text = "Hello<|endoftext|> wonderful world, it's 2024! caf\xc3\xa9";
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        pikv_tokenize(from_dir, text, strlen(text), &a, &na);
        pikv_tokenize(from_memory, text, strlen(text), &b, &nb);
        CHECK(na > 0 && na == nb && memcmp(a, b, na * sizeof *a) == 0, "ids from memory differ from the directory's");
        pikv_free(a);
        pikv_free(b);
    }
    pikv_tokenizer_free(from_dir);
    pikv_tokenizer_free(from_memory);

    pikv_tokenizer *t = pk_tokenizer_from_buffers(files + 1, 1);
    CHECK(!t && one_line_naming("vocab.json", "not given"), "no vocab.json: %s", t ? "loaded" : pikv_last_error());
    pikv_tokenizer_free(t);
    pk_tokenizer_file broken[2] = {files[0], {"merges.txt", "#version: 0.2\nx\n", 16}};
    t = pk_tokenizer_from_buffers(broken, 2);
    CHECK(!t && one_line_naming("merges.txt: line 2", NULL), "bad merges.txt: %s", t ? "loaded" : pikv_last_error());
    pikv_tokenizer_free(t);
    broken[0] = (pk_tokenizer_file){"vocab.json", "{\"a\": 0,", 8};
    broken[1] = files[1];
    t = pk_tokenizer_from_buffers(broken, 2);
    CHECK(!t && one_line_naming("vocab.json", "invalid JSON"), "bad vocab.json: %s", t ? "loaded" : pikv_last_error());
    pikv_tokenizer_free(t);
    for (int i = 0; i < 4; i++) free(data[i]);
}

/* ---- allocation failures ---------------------------------------------------- */

/* One step under test: it makes what it needs, arms the failure of the
 * fail_at-th allocation around the call under test only, and cleans up.
 * Returns that call's status. */
typedef int (*alloc_step)(const pikv_model *m, long fail_at);

/* Run a step with the n-th allocation failing, n = 1, 2, ... until it
 * succeeds: every failure must be an error that says "out of memory" (and,
 * under the sanitizer build, leaks nothing). */
static void fail_each_allocation(const char *label, alloc_step step, const pikv_model *m)
{
    long failures = 0, unreported = 0;
    int rc = -1;
    for (long n = 1; rc != 0 && n < 20000; n++) {
        pikv_clear_error();
        rc = step(m, n);
        if (rc != 0) {
            failures++;
            unreported += !one_line_naming("out of memory", NULL);
        }
    }
    CHECK(rc == 0 && failures > 0 && unreported == 0,
          "%s: %ld allocation failures, %ld without an out-of-memory message, %s", label, failures, unreported,
          rc == 0 ? "then success" : "never succeeded");
}

/* Making a session. */
static int step_session(const pikv_model *m, long fail_at)
{
    pk_test_fail_alloc_after(fail_at);
    pikv_session *s = pikv_session_new(m, 1);
    pk_test_fail_alloc_after(0);
    pikv_session_free(s);
    return s ? 0 : -1;
}

/* A prefill of 8 tokens, then one decode step. */
static int step_forward(const pikv_model *m, long fail_at)
{
    static const int32_t ids[9] = {5, 17, 299, 0, 42, 7, 7, 100, 3};
    float logits[N_VOCAB];
    pikv_session *s = pikv_session_new(m, 1);
    if (!s) return -1;
    pk_test_fail_alloc_after(fail_at);
    int rc = pikv_forward(s, ids, 8, logits, 0);
    if (rc == 0) rc = pikv_forward(s, ids + 8, 1, logits, 0);
    pk_test_fail_alloc_after(0);
    pikv_session_free(s);
    return rc;
}

/* Every kind of composition in one composed press: chunks, a plain scorer, a
 * wrapped one, per-layer ratios and the MoE router (with windows small enough
 * that it routes some of a 20-token context). */
static const char composite_spec[] =
    "composed[chunkkv(keydiff):ratio=0.3,chunk=4,knorm:0.2,adakv(snapkv:window=4):0.3,"
    "per_layer(streaming_llm):ratios=0.1/0.4,moe_router:ratio=0.3,experts=4,top_k=2,sink=2,window=4]";

/* Building the composite press from its spec. */
static int step_press_new(const pikv_model *m, long fail_at)
{
    pk_test_fail_alloc_after(fail_at);
    pikv_press *p = pikv_press_new(composite_spec, m, NULL);
    pk_test_fail_alloc_after(0);
    pikv_press_free(p);
    return p ? 0 : -1;
}

/* A 20-token context compressed by `spec`, then two questions answered. */
static int answer_with(const pikv_model *m, const char *spec, long fail_at)
{
    int32_t context[20];
    for (int i = 0; i < 20; i++) context[i] = (int32_t)(i * 37 % N_VOCAB);
    static const int32_t q1[3] = {11, 12, 13}, q2[2] = {200, 201};
    const int32_t *questions[2] = {q1, q2};
    const int n_question[2] = {3, 2};
    pikv_qa_request rq = {context, 20, questions, n_question, 2, 3, -1, 0};
    pikv_session *s = pikv_session_new(m, 1);
    pikv_press *p = pikv_press_new(spec, m, NULL);
    if (!s || !p) {
        pikv_session_free(s);
        pikv_press_free(p);
        return -1;
    }
    pikv_qa_result res;
    pk_test_fail_alloc_after(fail_at);
    int rc = pikv_answer(s, p, &rq, &res);
    pk_test_fail_alloc_after(0);
    if (rc == 0) pikv_qa_result_free(&res);
    pikv_press_free(p);
    pikv_session_free(s);
    return rc;
}

/* The pipeline with the composite press: compressed once, rewound per question. */
static int step_answer_composite(const pikv_model *m, long fail_at)
{
    return answer_with(m, composite_spec, fail_at);
}

/* The pipeline with a press that compresses while generating. */
static int step_answer_decoding(const pikv_model *m, long fail_at)
{
    return answer_with(m, "decoding(knorm):every=2,target=8", fail_at);
}

/* ---- what the fuzzers found ------------------------------------------------- */

/* Run a case in a child process, so that a sanitizer abort (the bug the case
 * reproduces) is reported as one failed check and the rest still runs. The
 * case returns 1 when the library behaved. */
static void in_child(const char *label, int (*run_case)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) exit(run_case() ? 0 : 1);
    int status = 0;
    int waited = pid > 0 && waitpid(pid, &status, 0) == pid;
    CHECK(waited && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%s: not refused cleanly (%s %d; the reason is above)", label,
          waited && WIFSIGNALED(status) ? "signal" : "exit status",
          waited && WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

/* pk_config_parse on JSON text must fail with a one-line message naming needle. */
static int config_refused(const char *json, const char *needle)
{
    cJSON *root = cJSON_Parse(json);
    pikv_config cfg;
    pikv_clear_error();
    int ok = root && pk_config_parse(root, "config.json", &cfg) != 0 && one_line_naming("config.json", needle);
    if (!ok) fprintf(stderr, "config %s: %s\n", json, pikv_last_error());
    cJSON_Delete(root);
    return ok;
}

/* n_inner defaults to 4 * n_embd, which overflows an int for n_embd > 2^29. */
static int config_n_embd_overflow(void)
{
    return config_refused("{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 1000000000, \"n_positions\": 1, "
                          "\"vocab_size\": 1}",
                          "n_embd");
}

/* A token id beyond the range of int. */
static int config_token_id_overflow(void)
{
    return config_refused("{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 4, \"n_positions\": 1, \"vocab_size\": 1, "
                          "\"bos_token_id\": 1e10}",
                          "bos_token_id");
}

/* An epsilon that is positive as a double but 0 as the float32 it becomes. */
static int config_epsilon_underflow(void)
{
    return config_refused("{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 4, \"n_positions\": 1, \"vocab_size\": 1, "
                          "\"layer_norm_epsilon\": 1e-75}",
                          "layer_norm_epsilon");
}

/* Reproducers of the fuzzers' findings (see fuzz/README.md). */
static void check_fuzz_findings(void)
{
    in_child("config: n_embd 1e9 overflows n_inner", config_n_embd_overflow);
    in_child("config: bos_token_id 1e10", config_token_id_overflow);
    in_child("config: layer_norm_epsilon 1e-75 rounds to 0", config_epsilon_underflow);

    /* Text from the file must not break the message over lines. */
    const char *dir = subdir("findings");
    write_text(dir, "config.json", synthetic_config);
    write_image(dir, "{\"a\":{\"dtype\":\"F3\\n2\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0);
    expect_load_error("dtype with a newline", dir, "model.safetensors", "unknown dtype");
    write_image(dir, "{\"wte\\n.weight\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,8]}}", 8, 0);
    expect_load_error("tensor name with a newline", dir, "model.safetensors", "needs 4 bytes");
    write_text(dir, "config.json", "{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 4, \"n_positions\": 1, "
                                   "\"vocab_size\": 1, \"activation_function\": \"gelu\\nnew\"}");
    expect_load_error("activation_function with a newline", dir, "config.json", "activation_function");

    /* An empty tensor between two overlapping ones hid the overlap. */
    write_text(dir, "config.json", synthetic_config);
    write_image(dir,
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[5,7]}}",
                8, 0);
    expect_load_error("overlap behind an empty tensor", dir, "model.safetensors", "overlap");
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/pikv-badinput-XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    check_fuzz_findings();
    pikv_model *m = check_synthetic_model(subdir("synthetic"));
    check_truncations();
    check_lying_headers();
    check_wrong_tensors();
    check_tokenizer_buffers();
    if (m) {
        check_position_limit(m);
        check_duo_patterns(m);
        fail_each_allocation("session creation", step_session, m);
        fail_each_allocation("forward pass", step_forward, m);
        fail_each_allocation("composite press", step_press_new, m);
        fail_each_allocation("answer with a composite press", step_answer_composite, m);
        fail_each_allocation("answer with a decoding press", step_answer_decoding, m);
    }
    pikv_model_free(m);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return check_done("badinput");
}
