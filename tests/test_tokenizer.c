/* Tests of the GPT-2 byte-level BPE tokenizer: Hugging Face's ids for the golden
 * texts, pre-tokenisation on Unicode spaces and contractions, special tokens from
 * each source, round trips, every error path, and allocation failures. */
#include "check.h"
#include "util/mem.h"
#include "pikv.h"

#include <cjson/cJSON.h>

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define REFERENCE_DIR "models/pikv-ref-14m"

/* Read a whole file (NUL-terminated); NULL when it cannot be read. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        char *grown = realloc(buf, cap *= 2);
        if (!grown) free(buf);
        buf = grown;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

/* Write a file into dir; returns 0 on success. */
static int write_in(const char *dir, const char *name, const char *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t written = fwrite(data, 1, len, f);
    return fclose(f) == 0 && written == len ? 0 : -1;
}

/* Remove the files a test directory may hold, then the directory. */
static void clear_dir(const char *dir, int remove_dir)
{
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer.json",
                                        "tokenizer_config.json"};
    char path[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    if (remove_dir) rmdir(dir);
}

/* Encode, returning the number of ids (or -1) and the ids in *ids. */
static long encode(const pikv_tokenizer *t, const char *text, size_t len, int32_t **ids)
{
    size_t n = 0;
    *ids = NULL;
    return pikv_tokenize(t, text, len, ids, &n) == 0 ? (long)n : -1;
}

/* Whether decode(encode(text)) gives the text back byte for byte. */
static int round_trips(const pikv_tokenizer *t, const char *text, size_t len)
{
    int32_t *ids;
    long n = encode(t, text, len, &ids);
    size_t out_len = 0;
    char *out = n >= 0 ? pikv_detokenize(t, ids, (size_t)n, &out_len) : NULL;
    int same = out && out_len == len && memcmp(out, text, len) == 0;
    pikv_free(ids);
    pikv_free(out);
    return same;
}

/* Whether encoding text gives the concatenation of encoding each piece alone,
 * i.e. the text pre-tokenises into exactly these pieces (NULL-terminated). */
static int splits_into(const pikv_tokenizer *t, const char *text, const char *const *pieces)
{
    int32_t *whole, *part;
    long n = encode(t, text, strlen(text), &whole), at = 0;
    int same = n >= 0;
    for (; same && *pieces; pieces++) {
        long k = encode(t, *pieces, strlen(*pieces), &part);
        same = k >= 0 && at + k <= n && memcmp(whole + at, part, (size_t)k * sizeof *part) == 0;
        at += k;
        pikv_free(part);
    }
    pikv_free(whole);
    return same && at == n;
}

/* The golden ids computed with Hugging Face's tokenizer, for one tokenizer. */
static void check_golden(const pikv_tokenizer *t, const cJSON *entries, const char *name)
{
    int index = 0;
    for (const cJSON *e = entries ? entries->child : NULL; e; e = e->next, index++) {
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(e, "text"));
        const cJSON *want = cJSON_GetObjectItem(e, "ids");
        if (!text || !cJSON_IsArray(want)) {
            CHECK(0, "%s[%d]: malformed golden entry", name, index);
            continue;
        }
        int32_t *ids;
        long n = encode(t, text, strlen(text), &ids);
        int same = n == cJSON_GetArraySize(want);
        long i = 0;
        for (const cJSON *w = want->child; same && w; w = w->next, i++)
            same = ids[i] == (int32_t)w->valuedouble;
        CHECK(same, "%s[%d]: ids differ for \"%.40s\" (%ld ids, want %d; first difference at %ld)",
              name, index, text, n, cJSON_GetArraySize(want), i - 1);
        CHECK(round_trips(t, text, strlen(text)), "%s[%d]: round trip of \"%.40s\"", name, index, text);
        pikv_free(ids);
    }
    CHECK(index > 0, "%s: no golden entries", name);
}

/* Pre-tokenisation of Unicode spaces, \s+(?!\S) and contractions; the expected
 * splits are those of GPT-2's regular expression. */
static void check_pretokenization(const pikv_tokenizer *t)
{
    CHECK(splits_into(t, "a\xc2\xa0\xc2\xa0" "b", (const char *const[]){"a", "\xc2\xa0", "\xc2\xa0", "b", NULL}),
          "no-break spaces are whitespace and do not join the next word");
    CHECK(splits_into(t, "x\xe3\x80\x80y \xe2\x80\x83z",
                      (const char *const[]){"x", "\xe3\x80\x80", "y", " ", "\xe2\x80\x83", "z", NULL}),
          "U+3000 and U+2003 are whitespace");
    CHECK(splits_into(t, "x\x1cy\xc2\x85z", (const char *const[]){"x", "\x1c", "y", "\xc2\x85", "z", NULL}),
          "U+001C is not whitespace, U+0085 is");
    CHECK(splits_into(t, "hi\xe2\x80\xa8\xe2\x80\xa8there\xe2\x80\x8bok",
                      (const char *const[]){"hi", "\xe2\x80\xa8", "\xe2\x80\xa8", "there", "\xe2\x80\x8b", "ok", NULL}),
          "U+2028 is whitespace, U+200B is not");
    CHECK(splits_into(t, "a  \n b\t\t c  ", (const char *const[]){"a", "  \n", " b", "\t\t", " c", "  ", NULL}),
          "a whitespace run leaves its last character to the next word, except at the end");
    CHECK(splits_into(t, "I'ts 'S ''s don't'll",
                      (const char *const[]){"I", "'t", "s", " '", "S", " ''", "s", " don", "'t", "'ll", NULL}),
          "contractions");
    CHECK(splits_into(t, " \xc2\xbd\xe2\x85\xa7 9x", (const char *const[]){" \xc2\xbd\xe2\x85\xa7", " 9", "x", NULL}),
          "numbers of categories No and Nl");
}

/* Special tokens found inside text are emitted as their ids. */
static void check_special_tokens(const pikv_tokenizer *t, int32_t end_of_text)
{
    int32_t *whole, *hello, *world;
    const char *text = "Hello<|endoftext|> world<|endoftext|>";
    long n = encode(t, text, strlen(text), &whole);
    long nh = encode(t, "Hello", 5, &hello), nw = encode(t, " world", 6, &world);
    int same = n == nh + nw + 2 && nh > 0 && nw > 0;
    if (same) {
        same = memcmp(whole, hello, (size_t)nh * sizeof *whole) == 0 && whole[nh] == end_of_text &&
               memcmp(whole + nh + 1, world, (size_t)nw * sizeof *whole) == 0 &&
               whole[n - 1] == end_of_text;
    }
    CHECK(same, "special token inside text: %ld ids", n);
    CHECK(round_trips(t, text, strlen(text)), "round trip with special tokens");
    pikv_free(whole);
    pikv_free(hello);
    pikv_free(world);
}

/* Invalid UTF-8 is an error that names the byte offset. */
static void check_invalid_utf8(const pikv_tokenizer *t)
{
    static const struct { const char *text; size_t len; const char *where; } cases[] = {
        {"ab\xff", 3, "byte 2"},                /* not a UTF-8 byte */
        {"\xc0\xaf", 2, "byte 0"},              /* overlong '/' */
        {"x\xed\xa0\x80y", 5, "byte 1"},        /* surrogate */
        {"ok \xe2\x82", 5, "byte 3"},           /* truncated */
        {"\xf4\x90\x80\x80", 4, "byte 0"},      /* past U+10FFFF */
        {"a\x80", 2, "byte 1"},                 /* stray continuation byte */
        {"<|endoftext|>\xe0\x80\xaf", 16, "byte 13"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 99;
        pikv_clear_error();
        int rc = pikv_tokenize(t, cases[i].text, cases[i].len, &ids, &n);
        char want[64];
        snprintf(want, sizeof want, "invalid UTF-8 at %s", cases[i].where);
        CHECK(rc == -1 && ids == NULL && n == 0 && strstr(pikv_last_error(), want),
              "invalid UTF-8 case %zu: rc %d, error \"%s\"", i, rc, pikv_last_error());
    }
}

/* Loading dir must fail with a message that contains `needle`. */
static void check_load_fails(const char *dir, const char *needle, const char *what)
{
    pikv_clear_error();
    pikv_tokenizer *t = pikv_tokenizer_load(dir);
    CHECK(!t && strstr(pikv_last_error(), needle), "%s: want an error naming %s, got \"%s\"",
          what, needle, t ? "(loaded)" : pikv_last_error());
    pikv_tokenizer_free(t);
}

/* Broken tokenizer directories and special tokens from tokenizer.json and
 * tokenizer_config.json, built in a temporary directory from the reference files. */
static void check_directories(const pikv_tokenizer *reference)
{
    char dir[] = "/tmp/pikv-tokenizer-XXXXXX";
    size_t vocab_len, merges_len;
    char *vocab = read_all(REFERENCE_DIR "/vocab.json", &vocab_len);
    char *merges = read_all(REFERENCE_DIR "/merges.txt", &merges_len);
    if (!mkdtemp(dir) || !vocab || !merges) {
        CHECK(0, "cannot set up a temporary tokenizer directory");
        free(vocab);
        free(merges);
        return;
    }

    check_load_fails("/nonexistent/pikv", "/nonexistent/pikv/vocab.json", "missing directory");
    write_in(dir, "merges.txt", merges, merges_len);
    check_load_fails(dir, "vocab.json", "missing vocab.json");

    write_in(dir, "vocab.json", "[1, 2, 3]", 9);
    check_load_fails(dir, "vocab.json", "vocab.json that is an array");
    write_in(dir, "vocab.json", "{\"a\": 0,", 8);
    check_load_fails(dir, "vocab.json", "truncated vocab.json");
    write_in(dir, "vocab.json", "{\"a\": 0.5}", 10);
    check_load_fails(dir, "vocab.json", "fractional id");
    write_in(dir, "vocab.json", "{\"a\": 0, \"b\": 0}", 16);
    check_load_fails(dir, "vocab.json", "id used twice");
    write_in(dir, "vocab.json", "{\"a\": 0}", 8);
    check_load_fails(dir, "no token for byte 0x00", "vocab.json without byte tokens");

    write_in(dir, "vocab.json", vocab, vocab_len);
    clear_dir(dir, 0);
    write_in(dir, "vocab.json", vocab, vocab_len);
    check_load_fails(dir, "merges.txt", "missing merges.txt");
    write_in(dir, "merges.txt", "#version: 0.2\n\xc4\xa0\n", 17);
    check_load_fails(dir, "merges.txt: line 2", "merges.txt line with one token");
    write_in(dir, "merges.txt", "a b c\n", 6);
    check_load_fails(dir, "merges.txt: line 1", "merges.txt line with three tokens");
    write_in(dir, "merges.txt", "qqqqzz b\n", 9);
    check_load_fails(dir, "merges.txt", "merges.txt with an unknown token");
    write_in(dir, "merges.txt", merges, merges_len);

    write_in(dir, "tokenizer.json", "{\"added_tokens\": 3}", 19);
    check_load_fails(dir, "tokenizer.json", "added_tokens that is not an array");
    const char *added = "{\"added_tokens\": [{\"id\": 8192, \"content\": \"<|pad|>\", \"special\": true},"
                        " {\"id\": 8193, \"content\": \"plain\", \"special\": false}]}";
    write_in(dir, "tokenizer.json", added, strlen(added));
    pikv_tokenizer *t = pikv_tokenizer_load(dir);
    CHECK(t && pikv_tokenizer_vocab_size(t) == 8193, "added special token past vocab.json: %s",
          t ? "wrong vocabulary size" : pikv_last_error());
    if (t) {
        int32_t *ids;
        long n = encode(t, "x<|pad|>plain", 13, &ids);
        CHECK(n >= 3 && ids[1] == 8192, "added special token inside text");
        CHECK(round_trips(t, "x<|pad|>plain", 13), "round trip with an added special token");
        pikv_free(ids);
        n = encode(t, "<|endoftext|>", 13, &ids);
        CHECK(n == 1 && ids[0] == 0, "<|endoftext|> stays special beside tokenizer.json's: %ld ids", n);
        pikv_free(ids);
    }
    pikv_tokenizer_free(t);
    clear_dir(dir, 0);

    /* Without tokenizer.json, bos/eos/unk of tokenizer_config.json are special. */
    int32_t *the;
    long n_the = encode(reference, "the", 3, &the);
    write_in(dir, "vocab.json", vocab, vocab_len);
    write_in(dir, "merges.txt", merges, merges_len);
    const char *config = "{\"eos_token\": {\"content\": \"the\"}, \"unk_token\": \"not a token\"}";
    write_in(dir, "tokenizer_config.json", config, strlen(config));
    t = pikv_tokenizer_load(dir);
    CHECK(t != NULL, "tokenizer_config.json special tokens: %s", t ? "" : pikv_last_error());
    if (t && n_the == 1) {
        int32_t *ids, *ba;
        long n = encode(t, "bathe", 5, &ids), n_ba = encode(t, "ba", 2, &ba);
        CHECK(n == n_ba + 1 && n_ba > 0 && memcmp(ids, ba, (size_t)n_ba * sizeof *ids) == 0 &&
                  ids[n - 1] == the[0],
              "eos_token from tokenizer_config.json splits \"bathe\": %ld ids", n);
        pikv_free(ids);
        pikv_free(ba);
    }
    pikv_free(the);
    pikv_tokenizer_free(t);
    write_in(dir, "tokenizer_config.json", "nope", 4);
    check_load_fails(dir, "tokenizer_config.json", "malformed tokenizer_config.json");

    clear_dir(dir, 1);
    free(vocab);
    free(merges);
}

/* Every allocation of load, encode and decode failing in turn gives an error and
 * leaks nothing (the sanitizer build reports leaks). */
static void check_allocation_failures(void)
{
    pikv_tokenizer *t = NULL;
    long failures = 0, bad = 0;
    for (long n = 1; !t && n < 10000; n++) {
        pikv_clear_error();
        pk_test_fail_alloc_after(n);
        t = pikv_tokenizer_load(REFERENCE_DIR);
        pk_test_fail_alloc_after(0);
        if (!t) {
            failures++;
            bad += strstr(pikv_last_error(), "out of memory") == NULL;
        }
    }
    CHECK(t && failures > 0 && bad == 0, "load under allocation failure: %ld failures, %ld without "
          "the out-of-memory message", failures, bad);
    if (!t) return;

    const char *text = "Hello<|endoftext|> wonderful world, it's 2024!";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = -1;
    failures = bad = 0;
    for (long n = 1; rc != 0 && n < 1000; n++) {
        pk_test_fail_alloc_after(n);
        rc = pikv_tokenize(t, text, strlen(text), &ids, &n_ids);
        pk_test_fail_alloc_after(0);
        if (rc != 0) {
            failures++;
            bad += ids != NULL || n_ids != 0;
        }
    }
    CHECK(rc == 0 && failures > 0 && bad == 0, "tokenize under allocation failure");

    char *out = NULL;
    failures = 0;
    for (long n = 1; !out && n < 100; n++) {
        pk_test_fail_alloc_after(n);
        out = pikv_detokenize(t, ids, n_ids, NULL);
        pk_test_fail_alloc_after(0);
        failures += !out;
    }
    CHECK(out && strcmp(out, text) == 0 && failures > 0, "detokenize under allocation failure");
    pikv_free(out);
    pikv_free(ids);
    pikv_tokenizer_free(t);
}

/* Large text: the first 200 KB of the evaluation text round-trip through both
 * tokenizers, and all of it (1.2 MB) encodes well within a second. */
static void check_large_text(const pikv_tokenizer *reference, const pikv_tokenizer *gpt2)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/data/eval_text.txt", shared_dir());
    char *text = read_all(path, &len);
    CHECK(text != NULL && len > 200000, "cannot read %s", path);
    if (!text || len <= 200000) {
        free(text);
        return;
    }
    size_t head = 200000;
    while (((unsigned char)text[head] & 0xC0) == 0x80) head--;   /* a character boundary */
    CHECK(round_trips(reference, text, head), "200 KB round trip (reference tokenizer)");
    CHECK(round_trips(gpt2, text, head), "200 KB round trip (gpt2 tokenizer)");

    int32_t *ids;
    long n = encode(gpt2, text, len, &ids);
    CHECK(n > (long)len / 8, "full evaluation text: only %ld ids", n);
    size_t out_len = 0;
    char *out = n > 0 ? pikv_detokenize(gpt2, ids, (size_t)n, &out_len) : NULL;
    CHECK(out && out_len == len && memcmp(out, text, len) == 0, "full evaluation text round trip");
    pikv_free(out);
    pikv_free(ids);
    free(text);
}

/* 100,000 special tokens from tokenizer.json, one text listed twice: loading
 * once compared each new token with every earlier one (13.6 s); now each keeps
 * its id, the repeated text keeps its first id, and encoding finds them. */
static void check_many_specials(const char *gpt2_dir)
{
    enum { N = 100000 };
    char dir[] = "/tmp/pikv-test-specials-XXXXXX", path[600];
    if (!mkdtemp(dir)) return;
    const char *copied[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        size_t len;
        snprintf(path, sizeof path, "%s/%s", gpt2_dir, copied[i]);
        char *text = read_all(path, &len);
        CHECK(text && write_in(dir, copied[i], text, len) == 0, "copy %s", copied[i]);
        free(text);
    }
    size_t cap = (size_t)N * 64 + 256, n = 0;
    char *json = malloc(cap);
    n += (size_t)snprintf(json + n, cap - n, "{\"added_tokens\": [");
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(json + n, cap - n, "{\"id\": %d, \"content\": \"<|s%d|>\", \"special\": true},",
                              50257 + i, i);
    n += (size_t)snprintf(json + n, cap - n, "{\"id\": 200000, \"content\": \"<|s5|>\", \"special\": true}]}");
    CHECK(write_in(dir, "tokenizer.json", json, n) == 0, "write tokenizer.json");
    free(json);
    pikv_tokenizer *t = pikv_tokenizer_load(dir);
    CHECK(t != NULL, "load 100,000 special tokens: %s", pikv_last_error());
    if (t) {
        /* The repeated <|s5|> keeps id 50262, so 200000 is no id at all. */
        CHECK(pikv_tokenizer_vocab_size(t) == 50257 + N, "ids: %d", pikv_tokenizer_vocab_size(t));
        int32_t *ids = NULL;
        const char *text = "a<|s99999|>b<|s5|><|s0|><|endoftext|>";
        long k = encode(t, text, strlen(text), &ids);
        CHECK(k == 6 && ids[1] == 50257 + 99999 && ids[3] == 50262 && ids[4] == 50257 && ids[5] == 50256,
              "specials found in text: %ld ids", k);
        CHECK(round_trips(t, text, strlen(text)), "round trip through 100,000 specials");
        pikv_free(ids);
        pikv_tokenizer_free(t);
    }
    clear_dir(dir, 1);
}

int main(void)
{
    char gpt2_dir[512], golden_path[512];
    snprintf(gpt2_dir, sizeof gpt2_dir, "%s/tokenizers/gpt2", shared_dir());
    snprintf(golden_path, sizeof golden_path, "%s/fixtures/tokenizer_golden.json", shared_dir());

    pikv_tokenizer *reference = pikv_tokenizer_load(REFERENCE_DIR);
    CHECK(reference != NULL, "load %s: %s", REFERENCE_DIR, pikv_last_error());
    pikv_tokenizer *gpt2 = pikv_tokenizer_load(gpt2_dir);
    CHECK(gpt2 != NULL, "load %s: %s", gpt2_dir, pikv_last_error());
    if (!reference || !gpt2) {
        pikv_tokenizer_free(reference);
        pikv_tokenizer_free(gpt2);
        return check_done("tokenizer");
    }
    CHECK(pikv_tokenizer_vocab_size(reference) == 8192, "reference vocabulary size %d",
          pikv_tokenizer_vocab_size(reference));
    CHECK(pikv_tokenizer_vocab_size(gpt2) == 50257, "gpt2 vocabulary size %d",
          pikv_tokenizer_vocab_size(gpt2));

    size_t golden_len;
    char *golden_text = read_all(golden_path, &golden_len);
    cJSON *golden = golden_text ? cJSON_Parse(golden_text) : NULL;
    CHECK(golden != NULL, "cannot read %s", golden_path);
    check_golden(reference, cJSON_GetObjectItem(golden, "reference"), "reference");
    check_golden(gpt2, cJSON_GetObjectItem(golden, "gpt2"), "gpt2");
    cJSON_Delete(golden);
    free(golden_text);

    check_pretokenization(gpt2);
    check_special_tokens(reference, 0);
    check_special_tokens(gpt2, 50256);
    check_invalid_utf8(gpt2);

    int32_t *ids = NULL;
    size_t n_ids = 99, out_len = 99;
    CHECK(pikv_tokenize(gpt2, "", 0, &ids, &n_ids) == 0 && n_ids == 0, "empty text gives no ids");
    pikv_free(ids);
    char *out = pikv_detokenize(gpt2, NULL, 0, &out_len);
    CHECK(out && out_len == 0 && out[0] == '\0', "no ids decode to the empty string");
    pikv_free(out);
    int32_t out_of_range[] = {50256, 50257}, negative[] = {-1};
    pikv_clear_error();
    CHECK(!pikv_detokenize(gpt2, out_of_range, 2, &out_len) && strstr(pikv_last_error(), "50257"),
          "id past the vocabulary: \"%s\"", pikv_last_error());
    CHECK(!pikv_detokenize(gpt2, negative, 1, &out_len) && strstr(pikv_last_error(), "-1"),
          "negative id: \"%s\"", pikv_last_error());

    check_many_specials(gpt2_dir);
    check_directories(reference);
    check_allocation_failures();
    check_large_text(reference, gpt2);

    pikv_tokenizer_free(reference);
    pikv_tokenizer_free(gpt2);
    return check_done("tokenizer");
}
