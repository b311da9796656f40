/* Loading checkpoints: the safetensors parser on hand-made files (every way a
 * header can lie), dtype conversion on hand-worked values, model directories
 * with broken or missing parts, sharded checkpoints, NaN weights, and an
 * allocation failure at every step of a load. */
#include "check.h"
#include "util/mem.h"
#include "model/safetensors.h"
#include "pikv.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

/* A safetensors image: 8-byte length, JSON header, data. */
static size_t build(uint8_t *out, const char *header, const void *data, size_t data_len)
{
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(n >> (8 * i));
    memcpy(out + 8, header, n);
    memcpy(out + 8 + n, data, data_len);
    return 8 + n + data_len;
}

/* Parsing must fail and the message must mention `needle`. */
static void expect_bad(const char *label, const char *header, size_t data_len, const char *needle)
{
    uint8_t buf[4096], data[256] = {0};
    size_t n = build(buf, header, data, data_len);
    pk_safetensors st;
    int rc = pk_st_parse(&st, buf, n, "x.safetensors");
    CHECK(rc != 0, "%s: parsed but should fail", label);
    CHECK(rc == 0 || (strstr(pikv_last_error(), needle) && strstr(pikv_last_error(), "x.safetensors")),
          "%s: message '%s' lacks '%s' or the file name", label, pikv_last_error(), needle);
    if (rc == 0) pk_st_close(&st);
}

static void check_parser(void)
{
    uint8_t buf[4096];
    /* F16: 1.0, -2.0, smallest subnormal; BF16: 1.0, -0.5 */
    const uint8_t data[] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0x80, 0x3f, 0x00, 0xbf};
    size_t n = build(buf,
                     "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[6,10]}}",
                     data, sizeof data);
    pk_safetensors st;
    CHECK(pk_st_parse(&st, buf, n, "ok.safetensors") == 0, "valid file: %s", pikv_last_error());
    const pk_st_tensor *a = pk_st_find(&st, "a"), *b = pk_st_find(&st, "b");
    CHECK(a && b && st.n_tensors == 2, "tensors a and b");
    if (a && b) {
        float fa[3], fb[2];
        pk_st_to_f32(&st, a, fa);
        pk_st_to_f32(&st, b, fb);
        CHECK(fa[0] == 1.f && fa[1] == -2.f && fa[2] == ldexpf(1.f, -24), "F16 values %g %g %g", fa[0], fa[1], fa[2]);
        CHECK(fb[0] == 1.f && fb[1] == -0.5f, "BF16 values %g %g", fb[0], fb[1]);
        CHECK(b->ndim == 2 && b->shape[0] == 1 && b->shape[1] == 2, "shape of b");
    }
    pk_st_close(&st);

    CHECK(pk_st_parse(&st, buf, 5, "short.safetensors") != 0 && strstr(pikv_last_error(), "too short"),
          "5-byte file: %s", pikv_last_error());
    uint8_t huge[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    CHECK(pk_st_parse(&st, huge, sizeof huge, "h.safetensors") != 0 && strstr(pikv_last_error(), "larger than the file"),
          "header length past the end: %s", pikv_last_error());
    expect_bad("not JSON", "{\"a\":", 0, "invalid JSON");
    expect_bad("JSON array", "[1,2]", 0, "not a JSON object");
    expect_bad("unknown dtype", "{\"a\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "unknown dtype");
    expect_bad("offsets past the end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
               "past the end");
    expect_bad("size vs shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
               "needs 12 bytes");
    expect_bad("overlap",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               16, "overlap");
    expect_bad("reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 16,
               "bad data_offsets");
    expect_bad("negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               "not a non-negative integer");
    expect_bad("missing fields", "{\"a\":{\"dtype\":\"F32\"}}", 0, "needs dtype, shape and data_offsets");

    /* Headers that would load other weights than they seem to name. */
    expect_bad("duplicate name",
               "{\"wte.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
               "\"wte.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               8, "'wte.weight' appears twice");
    expect_bad("embedded NUL",
               "{\"wte.weight\\u0000x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               "embedded NUL");
    /* An escaped backslash followed by "u0000" is an ordinary name. */
    n = build(buf, "{\"a\\\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4);
    CHECK(pk_st_parse(&st, buf, n, "ok.safetensors") == 0 && pk_st_find(&st, "a\\u0000"),
          "escaped backslash before u0000: %s", pikv_last_error());
    pk_st_close(&st);
    char deep[2100];
    for (int i = 0; i < 1001; i++) deep[i] = '[', deep[1001 + i] = ']';
    deep[2002] = '\0';
    expect_bad("nested 1,001 deep", deep, 0, "nested too deeply");
}

/* Write a tensor subset of `src` (all tensors when names == NULL) as a new file,
 * optionally poisoning the first element of `nan_in` with a NaN. */
static int write_subset(const pk_safetensors *src, const char *path, int (*keep)(const char *), const char *nan_in)
{
    char header[65536];
    size_t hn = 0, off = 0;
    hn += (size_t)snprintf(header + hn, sizeof header - hn, "{");
    for (int i = 0; i < src->n_tensors; i++) {
        const pk_st_tensor *t = &src->tensors[i];
        if (keep && !keep(t->name)) continue;
        hn += (size_t)snprintf(header + hn, sizeof header - hn, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", hn > 1 ? "," : "",
                               t->name, pk_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            hn += (size_t)snprintf(header + hn, sizeof header - hn, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        hn += (size_t)snprintf(header + hn, sizeof header - hn, "],\"data_offsets\":[%zu,%zu]}", off, off + t->nbytes);
        off += t->nbytes;
    }
    hn += (size_t)snprintf(header + hn, sizeof header - hn, "}");
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t n = hn;
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, hn, f);
    for (int i = 0; i < src->n_tensors; i++) {
        const pk_st_tensor *t = &src->tensors[i];
        if (keep && !keep(t->name)) continue;
        if (nan_in && strcmp(t->name, nan_in) == 0) {
            uint8_t *copy = malloc(t->nbytes);
            memcpy(copy, t->data, t->nbytes);
            copy[0] = 0xc0, copy[1] = 0x7f; /* BF16 NaN */
            fwrite(copy, 1, t->nbytes, f);
            free(copy);
        } else {
            fwrite(t->data, 1, t->nbytes, f);
        }
    }
    return fclose(f);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void copy_config(const char *to_dir)
{
    char src[512], *text;
    snprintf(src, sizeof src, "%s/fixtures/tiny-gpt2/config.json", shared_dir());
    FILE *f = fopen(src, "r");
    text = calloc(1, 65536);
    fread(text, 1, 65535, f);
    fclose(f);
    write_text(to_dir, "config.json", text);
    free(text);
}

static int layer0_only(const char *name) { return strncmp(name, "h.1.", 4) != 0; }
static int layer1_only(const char *name) { return strncmp(name, "h.1.", 4) == 0; }
static int all_but_ln_f(const char *name) { return strcmp(name, "ln_f.bias") != 0; }

/* The model must fail to load from dir with a message containing needle. */
static void expect_load_error(const char *label, const char *dir, const char *needle)
{
    pikv_model *m = pikv_model_load(dir);
    CHECK(!m && strstr(pikv_last_error(), needle), "%s: expected an error with '%s', got %s", label, needle,
          m ? "success" : pikv_last_error());
    pikv_model_free(m);
}

/* A safetensors file holding only wte.weight, F16 zeros of shape [1, n_embd]
 * (8 MB for the overflow case): what a load copies first. */
static void write_wte_only(const char *path, size_t n_embd)
{
    char header[160];
    int hn = snprintf(header, sizeof header, "{\"wte.weight\":{\"dtype\":\"F16\",\"shape\":[1,%zu],\"data_offsets\":[0,%zu]}}",
                      n_embd, 2 * n_embd);
    FILE *f = fopen(path, "wb");
    uint64_t n = (uint64_t)hn;
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, (size_t)hn, f);
    fseek(f, (long)(2 * n_embd) - 1, SEEK_CUR);
    fputc(0, f);
    fclose(f);
}

/* Dimensions whose parameter count overflows, index files that the shards
 * contradict, and a FIFO where a file should be. */
static void check_hostile_dirs(const pk_safetensors *src)
{
    char dir[600], path[1024];
    snprintf(dir, sizeof dir, "%s/overflow", tmp);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_wte_only(path, 4194428);
    /* The parameter count of this config wraps size_t to 206,680: a load used
     * to allocate that little and copy the first tensor far past it. */
    write_text(dir, "config.json", "{\"n_layer\":3889,\"n_head\":1,\"n_embd\":4194428,\"n_inner\":557041324,"
                                   "\"vocab_size\":1,\"n_positions\":1}");
    expect_load_error("parameter count wraps", dir, "do not fit in memory's address space");
    /* Within config.json's per-field limits, but more bytes than 64 bits count. */
    write_text(dir, "config.json", "{\"n_layer\":4096,\"n_head\":1,\"n_embd\":16777216,\"n_inner\":67108864,"
                                   "\"vocab_size\":1,\"n_positions\":1}");
    expect_load_error("weight bytes overflow", dir, "do not fit in memory's address space");

    /* The index puts layer 1 in the first shard, but its tensors are in the second. */
    snprintf(dir, sizeof dir, "%s/wrong-shard", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    write_subset(src, path, layer0_only, NULL);
    snprintf(path, sizeof path, "%s/b.safetensors", dir);
    write_subset(src, path, layer1_only, NULL);
    char index[65536];
    size_t n = (size_t)snprintf(index, sizeof index, "{\"weight_map\":{");
    for (int i = 0; i < src->n_tensors; i++)
        n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\":\"%s\"", i ? "," : "", src->tensors[i].name,
                              strcmp(src->tensors[i].name, "h.1.ln_1.weight") == 0 ? "a.safetensors"
                              : layer1_only(src->tensors[i].name)                ? "b.safetensors"
                                                                                  : "a.safetensors");
    snprintf(index + n, sizeof index - n, "}}");
    write_text(dir, "model.safetensors.index.json", index);
    expect_load_error("tensor in the wrong shard", dir,
                      "weight_map puts tensor 'h.1.ln_1.weight' in a.safetensors, but that file does not hold it");
    /* A tensor the map leaves out is missing, even though a shard holds it. */
    n = (size_t)snprintf(index, sizeof index, "{\"weight_map\":{");
    for (int i = 0, k = 0; i < src->n_tensors; i++)
        if (strcmp(src->tensors[i].name, "ln_f.weight") != 0)
            n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\":\"%s\"", k++ ? "," : "", src->tensors[i].name,
                                  layer1_only(src->tensors[i].name) ? "b.safetensors" : "a.safetensors");
    snprintf(index + n, sizeof index - n, "}}");
    write_text(dir, "model.safetensors.index.json", index);
    expect_load_error("tensor not in the map", dir, "missing tensor 'ln_f.weight'");

    /* FIFOs where the files should be: refused at once, never waited on. */
    snprintf(dir, sizeof dir, "%s/fifo", tmp);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo %s", path);
    expect_load_error("config.json a FIFO", dir, "config.json: not a regular file (a FIFO)");
    unlink(path);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo %s", path);
    expect_load_error("shard a FIFO", dir, "model.safetensors: not a regular file (a FIFO)");
    pikv_tokenizer *tok = pikv_tokenizer_load(dir);
    CHECK(!tok && strstr(pikv_last_error(), "vocab.json: cannot open"), "no vocab.json: %s", pikv_last_error());
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo %s", path);
    tok = pikv_tokenizer_load(dir);
    CHECK(!tok && strstr(pikv_last_error(), "vocab.json: not a regular file (a FIFO)"), "vocab.json a FIFO: %s",
          pikv_last_error());
    pikv_tokenizer_free(tok);
}

static void check_model_dirs(void)
{
    char tiny[512], path[1024], dir[600];
    snprintf(tiny, sizeof tiny, "%s/fixtures/tiny-gpt2/model.safetensors", shared_dir());
    pk_safetensors src;
    CHECK(pk_st_open(&src, tiny) == 0, "open tiny-gpt2: %s", pikv_last_error());

    expect_load_error("no directory", "/nonexistent/model", "config.json: not found");

    snprintf(dir, sizeof dir, "%s/badconfig", tmp);
    mkdir(dir, 0700);
    write_text(dir, "config.json", "{\"n_layer\": 2, ");
    expect_load_error("truncated config", dir, "invalid JSON");
    char deep[2100];
    for (int i = 0; i < 1001; i++) deep[i] = '[', deep[1001 + i] = ']';
    deep[2002] = '\0';
    write_text(dir, "config.json", deep);
    expect_load_error("config nested past cJSON's limit", dir, "config.json: nested too deeply");
    write_text(dir, "config.json", "{\"n_layer\":2,\"n_head\":3,\"n_embd\":64,\"n_positions\":8,\"vocab_size\":5}");
    expect_load_error("heads do not divide", dir, "not a multiple of n_head");
    write_text(dir, "config.json", "{\"n_layer\":2,\"n_head\":2,\"n_embd\":64,\"vocab_size\":5}");
    expect_load_error("no positions", dir, "missing \"n_positions\"");
    write_text(dir, "config.json", "{\"model_type\":\"llama\"}");
    expect_load_error("not gpt2", dir, "not supported");
    write_text(dir, "config.json", "{\"n_layer\":-2,\"n_head\":2,\"n_embd\":64,\"n_positions\":8,\"vocab_size\":5}");
    expect_load_error("negative layers", dir, "\"n_layer\" must be an integer >= 1");

    snprintf(dir, sizeof dir, "%s/noweights", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    expect_load_error("no weights", dir, "no model.safetensors");

    snprintf(dir, sizeof dir, "%s/missing", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_subset(&src, path, all_but_ln_f, NULL);
    expect_load_error("missing tensor", dir, "missing tensor 'ln_f.bias'");

    /* Truncated copies: inside the header, and inside the data. */
    snprintf(dir, sizeof dir, "%s/truncated", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t cuts[] = {4, 100, src.map_size / 2, src.map_size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        FILE *f = fopen(path, "wb");
        fwrite(src.map, 1, cuts[i], f);
        fclose(f);
        pikv_model *m = pikv_model_load(dir);
        CHECK(!m && strstr(pikv_last_error(), "model.safetensors"), "cut at %zu: %s", cuts[i],
              m ? "loaded" : pikv_last_error());
        pikv_model_free(m);
    }

    /* The same weights in two shards with an index load to the same model. */
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    write_subset(&src, path, layer0_only, NULL);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    write_subset(&src, path, layer1_only, NULL);
    char index[65536];
    size_t n = (size_t)snprintf(index, sizeof index, "{\"metadata\":{},\"weight_map\":{");
    for (int i = 0; i < src.n_tensors; i++)
        n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i ? "," : "",
                              src.tensors[i].name, layer1_only(src.tensors[i].name) ? 2 : 1);
    snprintf(index + n, sizeof index - n, "}}");
    write_text(dir, "model.safetensors.index.json", index);
    pikv_model *sharded = pikv_model_load(dir);
    char tiny_dir[512];
    snprintf(tiny_dir, sizeof tiny_dir, "%s/fixtures/tiny-gpt2", shared_dir());
    pikv_model *whole = pikv_model_load(tiny_dir);
    CHECK(sharded && whole, "sharded load: %s", pikv_last_error());
    if (sharded && whole) {
        int32_t ids[5] = {15496, 11, 616, 3290, 318};
        float a[50257], b[50257];
        pikv_session *s1 = pikv_session_new(sharded, 1), *s2 = pikv_session_new(whole, 1);
        pikv_forward(s1, ids, 5, a, 0);
        pikv_forward(s2, ids, 5, b, 0);
        CHECK(memcmp(a, b, sizeof a) == 0, "sharded and single-file logits differ");
        pikv_session_free(s1);
        pikv_session_free(s2);
    }
    pikv_model_free(sharded);

    /* NaN weights load, and are counted with the tensor named. */
    snprintf(dir, sizeof dir, "%s/nan", tmp);
    mkdir(dir, 0700);
    copy_config(dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_subset(&src, path, NULL, "h.0.mlp.c_fc.weight");
    pikv_model *nan_model = pikv_model_load(dir);
    CHECK(nan_model != NULL, "NaN model loads: %s", pikv_last_error());
    if (nan_model) {
        pikv_model_info info;
        pikv_model_get_info(nan_model, &info);
        CHECK(info.nonfinite_weights == 1 && strcmp(info.first_nonfinite_tensor, "h.0.mlp.c_fc.weight") == 0,
              "NaN weights: %zu in '%s'", info.nonfinite_weights, info.first_nonfinite_tensor);
        pikv_model_free(nan_model);
    }

    /* An allocation failure at any point of a load frees everything and says so. */
    int failures = 0, n_alloc;
    for (n_alloc = 1; n_alloc < 10000; n_alloc++) {
        pk_test_fail_alloc_after(n_alloc);
        pikv_model *m = pikv_model_load(tiny_dir);
        pk_test_fail_alloc_after(0);
        if (m) {
            pikv_model_free(m);
            break;
        }
        failures += strstr(pikv_last_error(), "out of memory") != NULL;
    }
    CHECK(failures == n_alloc - 1 && n_alloc > 5, "allocation failures reported: %d of %d", failures, n_alloc - 1);
    pikv_model_free(whole);
    check_hostile_dirs(&src);
    pk_st_close(&src);
}

int main(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/pikv-test-loading-XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    check_parser();
    check_model_dirs();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return check_done("loading");
}
