/* libFuzzer target: encoding and decoding with the bundled tokenizer.
 *
 * The input is encoded as text: it must succeed exactly when the bytes are
 * valid UTF-8 (checked here by an independent validator), and the ids must
 * then decode back to the very same bytes. The input is also decoded as an
 * array of int32 ids, which must fail cleanly for any id outside the
 * vocabulary. */
#include "fuzz.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pikv_tokenizer *tokenizer;

/* Load the bundled tokenizer once for the whole run. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tokenizer = pikv_tokenizer_load(fuzz_model_dir());
    if (!tokenizer) {
        fprintf(stderr, "fuzz_tokenize: %s\n", pikv_last_error());
        exit(1);
    }
    return 0;
}

/* Well-formed UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates,
 * nothing past U+10FFFF, no truncated sequence. */
static int is_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (len == 0 || n - i < len) return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        uint8_t c1 = len > 1 ? s[i + 1] : 0;
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 > 0x8F))
            return 0;
        i += len;
    }
    return 1;
}

/* Encode the input as text; on success the ids must decode to the input. */
static void encode_and_decode(const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n_ids = 0, len = 0;
    pikv_clear_error();
    int rc = pikv_tokenize(tokenizer, (const char *)data, size, &ids, &n_ids);
    FUZZ_ASSERT((rc == 0) == is_utf8(data, size), "tokenize returned %d on %s UTF-8", rc,
                is_utf8(data, size) ? "valid" : "invalid");
    if (rc != 0) {
        fuzz_check_error();
        FUZZ_ASSERT(ids == NULL && n_ids == 0, "a failed encode returned ids");
        return;
    }
    char *text = pikv_detokenize(tokenizer, ids, n_ids, &len);
    FUZZ_ASSERT(text != NULL, "encoded ids do not decode: %s", pikv_last_error());
    FUZZ_ASSERT(len == size && memcmp(text, data, size) == 0, "round trip changed %zu bytes into %zu", size, len);
    pikv_free(text);
    pikv_free(ids);
}

/* Decode the input read as int32 ids (native byte order). */
static void decode_ids(const uint8_t *data, size_t size)
{
    size_t n = size / sizeof(int32_t), len = 0;
    int32_t *ids = malloc(n ? n * sizeof *ids : 1);
    FUZZ_ASSERT(ids != NULL, "cannot allocate %zu ids", n);
    memcpy(ids, data, n * sizeof *ids);
    int vocab = pikv_tokenizer_vocab_size(tokenizer), in_range = 1;
    for (size_t i = 0; i < n; i++) in_range &= ids[i] >= 0 && ids[i] < vocab;
    pikv_clear_error();
    char *text = pikv_detokenize(tokenizer, ids, n, &len);
    if (text) FUZZ_ASSERT(strlen(text) <= len && text[len] == '\0', "decoded text is not terminated at %zu", len);
    else fuzz_check_error();
    FUZZ_ASSERT(in_range ? text != NULL : text == NULL, "ids %s the vocabulary, decode %s",
                in_range ? "inside" : "outside", text ? "succeeded" : "failed");
    pikv_free(text);
    free(ids);
}

/* Both directions on every input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    encode_and_decode(data, size);
    decode_ids(data, size);
    return 0;
}
