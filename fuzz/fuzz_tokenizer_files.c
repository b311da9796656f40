/* libFuzzer target: loading a tokenizer from arbitrary file contents.
 *
 * The input holds up to four files separated by NUL bytes, in the order
 * vocab.json, merges.txt, tokenizer.json, tokenizer_config.json. Files after
 * the last part are absent, and so is an empty optional one (so that
 * tokenizer_config.json, read only without tokenizer.json, is reached); a
 * missing required file is an error to check too. Bytes after a fourth NUL are
 * ignored. Whatever loads must then encode and
 * decode a short text without touching memory it does not own. */
#include "fuzz.h"
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Encode a short text that exercises contractions, numbers, spaces, a special
 * token and multi-byte characters, then decode the ids and a few edge ids. */
static void use_tokenizer(const pikv_tokenizer *t)
{
    static const char text[] = "Hello, it's 2024!  <|endoftext|> caf\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80\n";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    pikv_clear_error();
    if (pikv_tokenize(t, text, sizeof text - 1, &ids, &n_ids) != 0) {
        fuzz_check_error();
        return;
    }
    int vocab = pikv_tokenizer_vocab_size(t);
    for (size_t i = 0; i < n_ids; i++)
        FUZZ_ASSERT(ids[i] >= 0 && ids[i] < vocab, "id %d outside the vocabulary of %d", ids[i], vocab);
    size_t len;
    char *decoded = pikv_detokenize(t, ids, n_ids, &len);
    FUZZ_ASSERT(decoded != NULL, "ids from the encoder do not decode: %s", pikv_last_error());
    pikv_free(decoded);
    const int32_t edges[] = {0, vocab - 1, vocab, -1};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) pikv_free(pikv_detokenize(t, &edges[i], 1, &len));
    pikv_free(ids);
}

/* Split the input into files and load a tokenizer from them. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"};
    pk_tokenizer_file files[4];
    size_t n_files = 0, part = 0, start = 0;
    while (part < 4) {
        const uint8_t *sep = start < size ? memchr(data + start, '\0', size - start) : NULL;
        size_t end = sep ? (size_t)(sep - data) : size;
        if (part < 2 || end > start) files[n_files++] = (pk_tokenizer_file){names[part], data + start, end - start};
        part++;
        if (!sep) break;
        start = end + 1;
    }
    pikv_clear_error();
    pikv_tokenizer *t = pk_tokenizer_from_buffers(files, n_files);
    if (!t) {
        fuzz_check_error();
        return 0;
    }
    use_tokenizer(t);
    pikv_tokenizer_free(t);
    return 0;
}
