/* GPT-2 byte-level BPE tokenizer, matching Hugging Face's GPT-2 tokenizer id for id.
 *
 * Encoding: special tokens are cut out of the text first (leftmost, longest match)
 * and emitted as their ids. Each segment between them is split into pre-tokens by
 * GPT-2's pattern
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * implemented as a scanner over code points whose Unicode categories come from
 * utf8proc. The bytes of a pre-token become the vocabulary's single-byte tokens
 * (GPT-2 writes byte b as a printable character, the bytes_to_unicode table), and
 * adjacent pairs are merged lowest merge rank first until no listed pair remains.
 *
 * Decoding concatenates the bytes each token stands for. */
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Ids at or above this are rejected: it bounds the tables sized by the largest id. */
#define MAX_TOKEN_ID (1 << 24)

/* GPT-2's byte-level alphabet maps the 256 bytes to code points below this. */
#define BYTE_LEVEL_CODEPOINTS 324

/* A merge rule: the pair (left id << 32 | right id), its rank and the merged id. */
typedef struct merge_slot {
    uint64_t pair;
    uint32_t rank;
    int32_t merged;
} merge_slot;

#define EMPTY_PAIR UINT64_MAX

/* Where the bytes of one token lie in piece_bytes; len < 0 for an unused id. */
typedef struct token_piece {
    size_t offset;
    int32_t len;
} token_piece;

/* A special token: the text that stands for it in input, and its id. */
typedef struct special_token {
    char *text;
    size_t len;
    int32_t id;
} special_token;

struct pikv_tokenizer {
    int32_t n_ids;                  /* ids run from 0 to n_ids - 1 */
    token_piece *pieces;            /* [n_ids]: what each id decodes to */
    unsigned char *piece_bytes;
    int32_t byte_token[256];        /* the single-byte token of each byte */
    merge_slot *merges;             /* open-addressing hash map of merge rules */
    size_t merge_mask;
    special_token *specials;        /* longest first, so the first match is longest */
    int n_specials;
    int specials_cap;               /* room in specials, while loading */
    unsigned char special_first_byte[256];  /* 1 where some special token starts */
};

/* ---- UTF-8 and the byte-level alphabet ---------------------------------- */

/* Decode the character at s (avail > 0 bytes) and return its byte length, or 0
 * when it is not valid UTF-8: stray or missing continuation bytes, overlong forms,
 * surrogates and code points past U+10FFFF are all rejected. */
static size_t utf8_char(const unsigned char *s, size_t avail, utf8proc_int32_t *cp)
{
    utf8proc_ssize_t n = utf8proc_iterate(s, (utf8proc_ssize_t)(avail < 4 ? avail : 4), cp);
    utf8proc_ssize_t shortest = *cp < 0x80 ? 1 : *cp < 0x800 ? 2 : *cp < 0x10000 ? 3 : 4;
    return n > 0 && n == shortest && utf8proc_codepoint_valid(*cp) ? (size_t)n : 0;
}

/* Whether s[0..len) is entirely valid UTF-8. */
static int valid_utf8(const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        size_t n = utf8_char((const unsigned char *)s + i, len - i, &cp);
        if (n == 0) return 0;
        i += n;
    }
    return 1;
}


/* GPT-2's bytes_to_unicode: the printable bytes '!'..'~', U+00A1..U+00AC and
 * U+00AE..U+00FF stand for themselves; the other 68 bytes take U+0100 onwards in
 * byte order. to_byte is the inverse, -1 for code points no byte maps to. */
static void byte_level_tables(uint32_t to_codepoint[256], int16_t to_byte[BYTE_LEVEL_CODEPOINTS])
{
    uint32_t next_extra = 256;
    for (int i = 0; i < BYTE_LEVEL_CODEPOINTS; i++) to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        to_codepoint[b] = printable ? (uint32_t)b : next_extra++;
        to_byte[to_codepoint[b]] = (int16_t)b;
    }
}

/* Write the bytes a vocabulary string stands for into out and return their count.
 * Each character maps back through the byte-level alphabet; a string holding a
 * character outside it stands for its own UTF-8 bytes, as in Hugging Face's
 * ByteLevel decoder. out must hold len bytes. */
static size_t byte_level_decode(const int16_t to_byte[BYTE_LEVEL_CODEPOINTS],
                                const char *s, size_t len, unsigned char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t step = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                                 (utf8proc_ssize_t)(len - i), &cp);
        if (step <= 0 || cp >= BYTE_LEVEL_CODEPOINTS || to_byte[cp] < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[n++] = (unsigned char)to_byte[cp];
        i += (size_t)step;
    }
    return n;
}

/* ---- files and JSON ------------------------------------------------------- */

/* dir + "/" + name, without doubling a slash that dir already ends with. */
static char *join_path(const char *dir, const char *name)
{
    size_t dlen = strlen(dir), nlen = strlen(name);
    int slash = dlen > 0 && dir[dlen - 1] != '/';
    char *path = pk_malloc(dlen + (size_t)slash + nlen + 1, "tokenizer file path");
    if (!path) return NULL;
    memcpy(path, dir, dlen);
    if (slash) path[dlen] = '/';
    memcpy(path + dlen + (size_t)slash, name, nlen + 1);
    return path;
}

/* Read a whole tokenizer file with the tree's one reader. Returns 1 and leaves
 * *data NULL when the file does not exist and `optional` is set. */
static int read_file(const char *path, int optional, char **data, size_t *size)
{
    *size = 0;
    if (optional && access(path, F_OK) != 0 && errno == ENOENT) {
        *data = NULL;
        return 1;
    }
    *data = pk_read_file(path, PK_MAX_TOKENIZER_BYTES, size);
    return *data ? 0 : -1;
}

/* Parse the JSON text of a file (NUL-terminated at text[size]). */
static int parse_json(const char *text, size_t size, cJSON **json)
{
    const char *parse_end = text;
    *json = cJSON_ParseWithLengthOpts(text, size + 1, &parse_end, 1);
    if (!*json) return pk_fail("%s near byte %zu", pk_json_error_reason(text, size), (size_t)(parse_end - text));
    return 0;
}

/* A JSON number that is an integer id in 0..MAX_TOKEN_ID-1, or -1. */
static int32_t json_token_id(const cJSON *item)
{
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0 && v < MAX_TOKEN_ID) || v != floor(v)) return -1;
    return (int32_t)v;
}

/* ---- the vocabulary while loading ----------------------------------------- */

/* vocab.json as a hash map from token string to id; it lives only during loading
 * (merges.txt and the special tokens are resolved through it). Keys point into
 * the parsed JSON tree. */
typedef struct vocab_entry {
    const char *key;
    size_t len;
    uint64_t hash;
    int32_t id;
} vocab_entry;

typedef struct vocab_loader {
    cJSON *json;
    vocab_entry *map;
    size_t mask;
    int32_t max_id;
    size_t key_bytes;   /* total length of all token strings */
} vocab_loader;

/* FNV-1a over the concatenation a + b (b may be empty): merges look up "a" "b"
 * joined without building the joined string. */
static uint64_t hash_concat(const char *a, size_t alen, const char *b, size_t blen)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < alen; i++) h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
    for (size_t i = 0; i < blen; i++) h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
    return h;
}

/* The slot holding the string a + b, or the empty slot where it would go. */
static vocab_entry *vocab_slot(const vocab_loader *v, const char *a, size_t alen,
                               const char *b, size_t blen)
{
    uint64_t h = hash_concat(a, alen, b, blen);
    for (size_t i = (size_t)h & v->mask;; i = (i + 1) & v->mask) {
        vocab_entry *e = &v->map[i];
        if (!e->key) return e;
        if (e->hash == h && e->len == alen + blen && memcmp(e->key, a, alen) == 0 &&
            memcmp(e->key + alen, b, blen) == 0)
            return e;
    }
}

/* The id of the token a + b, or -1 when it is not in the vocabulary. */
static int32_t vocab_find(const vocab_loader *v, const char *a, size_t alen,
                          const char *b, size_t blen)
{
    const vocab_entry *e = vocab_slot(v, a, alen, b, blen);
    return e->key ? e->id : -1;
}

/* Smallest power of two that is at least 2 * n and at least 16: the capacity of
 * an open-addressing table for n entries. */
static size_t table_capacity(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

/* Parse vocab.json (an object of token string -> id), check it (integer ids, no
 * id or string twice, a token for every byte) and fill the string map and the
 * tokenizer's byte tokens. */
static int load_vocab(pikv_tokenizer *t, vocab_loader *v, const char *text, size_t size)
{
    if (parse_json(text, size, &v->json) < 0) return -1;
    if (!cJSON_IsObject(v->json)) return pk_fail("not a JSON object of token -> id");

    size_t n = 0;
    v->max_id = -1;
    for (const cJSON *e = v->json->child; e; e = e->next, n++) {
        int32_t id = json_token_id(e);
        if (id < 0)
            return pk_fail("entry %zu: id is not an integer in 0..%d", n + 1, MAX_TOKEN_ID - 1);
        if (id > v->max_id) v->max_id = id;
    }
    if (n == 0) return pk_fail("no tokens");

    size_t cap = table_capacity(n);
    v->mask = cap - 1;
    v->map = pk_calloc(cap, sizeof *v->map, "vocabulary map");
    unsigned char *id_taken = pk_calloc((size_t)v->max_id + 1, 1, "vocabulary ids");
    int rc = v->map && id_taken ? 0 : -1;
    n = 0;
    for (const cJSON *e = v->json->child; e && rc == 0; e = e->next) {
        int32_t id = json_token_id(e);
        size_t len = strlen(e->string);
        vocab_entry *slot = vocab_slot(v, e->string, len, "", 0);
        n++;
        if (slot->key)
            rc = pk_fail("entry %zu: token repeats entry with id %d", n, slot->id);
        else if (id_taken[id])
            rc = pk_fail("entry %zu: id %d is already taken", n, id);
        else {
            id_taken[id] = 1;
            *slot = (vocab_entry){e->string, len, hash_concat(e->string, len, "", 0), id};
            v->key_bytes += len;
        }
    }
    pk_free(id_taken);
    if (rc < 0) return -1;

    uint32_t to_codepoint[256];
    int16_t to_byte[BYTE_LEVEL_CODEPOINTS];
    byte_level_tables(to_codepoint, to_byte);
    for (int b = 0; b < 256; b++) {
        utf8proc_uint8_t utf8[4];
        utf8proc_ssize_t len = utf8proc_encode_char((utf8proc_int32_t)to_codepoint[b], utf8);
        t->byte_token[b] = vocab_find(v, (const char *)utf8, (size_t)len, "", 0);
        if (t->byte_token[b] < 0)
            return pk_fail("no token for byte 0x%02X (\"%.*s\")", b, (int)len, (const char *)utf8);
    }
    return 0;
}

/* ---- special tokens -------------------------------------------------------- */

/* Add a special token; a text that repeats an earlier one is dropped later, by
 * drop_repeated_specials (the first source wins). Empty texts are ignored: they
 * would match everywhere. Text that is not valid UTF-8 could never match whole
 * characters, so it is an error. */
static int add_special(pikv_tokenizer *t, const char *text, int32_t id)
{
    size_t len = strlen(text);
    if (len == 0) return 0;
    if (!valid_utf8(text, len)) return pk_fail("special token with id %d is not valid UTF-8", id);
    if (t->n_specials == t->specials_cap) {
        /* Doubling: a tokenizer.json may list 100,000+ added tokens. */
        if (t->specials_cap > INT_MAX / 2) return pk_fail("too many special tokens");
        int cap = t->specials_cap ? 2 * t->specials_cap : 16;
        special_token *grown = pk_realloc(t->specials, (size_t)cap * sizeof *grown, "special tokens");
        if (!grown) return -1;
        t->specials = grown;
        t->specials_cap = cap;
    }
    char *copy = pk_strdup(text, "special token");
    if (!copy) return -1;
    t->specials[t->n_specials++] = (special_token){copy, len, id};
    return 0;
}

/* Special tokens from tokenizer.json: the added_tokens entries marked special,
 * with their own ids. */
static int load_added_tokens(pikv_tokenizer *t, vocab_loader *v, const char *text, size_t size)
{
    (void)v;
    cJSON *json;
    int rc = parse_json(text, size, &json);
    if (rc != 0) return rc;
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        return pk_fail("not a JSON object");
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(json, "added_tokens");
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        rc = pk_fail("added_tokens is not an array");
    int index = 0;
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e && rc == 0;
         e = e->next, index++) {
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"))) continue;
        const char *content = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "content"));
        int32_t id = json_token_id(cJSON_GetObjectItemCaseSensitive(e, "id"));
        if (!content)
            rc = pk_fail("added_tokens[%d]: content is not a string", index);
        else if (id < 0)
            rc = pk_fail("added_tokens[%d]: id is not an integer in 0..%d", index, MAX_TOKEN_ID - 1);
        else
            rc = add_special(t, content, id);
    }
    cJSON_Delete(json);
    return rc;
}

/* Special tokens from tokenizer_config.json: bos_token, eos_token and unk_token,
 * given as a string or as {"content": string}, when they are in the vocabulary. */
static int load_config_tokens(pikv_tokenizer *t, vocab_loader *v, const char *contents, size_t size)
{
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token"};
    cJSON *json;
    int rc = parse_json(contents, size, &json);
    if (rc != 0) return rc;
    if (!cJSON_IsObject(json)) rc = pk_fail("not a JSON object");
    for (size_t k = 0; k < sizeof keys / sizeof keys[0] && rc == 0; k++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, keys[k]);
        if (cJSON_IsObject(item)) item = cJSON_GetObjectItemCaseSensitive(item, "content");
        const char *text = cJSON_GetStringValue(item);
        int32_t id = text ? vocab_find(v, text, strlen(text), "", 0) : -1;
        if (id >= 0) rc = add_special(t, text, id);
    }
    cJSON_Delete(json);
    return rc;
}

/* Order for qsort_r over indices into the specials array (arg): by text, then
 * by position, so that the first of equal texts comes first. */
static int by_text_then_index(const void *a, const void *b, void *arg)
{
    const special_token *sp = arg;
    int i = *(const int *)a, j = *(const int *)b;
    int c = strcmp(sp[i].text, sp[j].text);
    return c ? c : (i > j) - (i < j);
}

/* Keep only the first special token of each text, in O(n log n): a sort of the
 * indices by text instead of comparing every pair. */
static int drop_repeated_specials(pikv_tokenizer *t)
{
    int n = t->n_specials;
    if (n < 2) return 0;
    int *order = pk_malloc_array((size_t)n, sizeof *order, "special tokens");
    unsigned char *repeated = pk_calloc((size_t)n, 1, "special tokens");
    if (!order || !repeated) {
        pk_free(order);
        pk_free(repeated);
        return -1;
    }
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, by_text_then_index, t->specials);
    for (int k = 1; k < n; k++)
        if (strcmp(t->specials[order[k - 1]].text, t->specials[order[k]].text) == 0) repeated[order[k]] = 1;
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (repeated[i]) pk_free(t->specials[i].text);
        else t->specials[kept++] = t->specials[i];
    }
    t->n_specials = kept;
    pk_free(order);
    pk_free(repeated);
    return 0;
}

/* Order for qsort: longer special tokens first. */
static int longer_special_first(const void *a, const void *b)
{
    size_t la = ((const special_token *)a)->len, lb = ((const special_token *)b)->len;
    return (la < lb) - (la > lb);
}

/* ---- merges ---------------------------------------------------------------- */

/* Spread a pair key over the table's bits. */
static size_t pair_hash(uint64_t pair)
{
    pair ^= pair >> 31;
    pair *= 0x9E3779B97F4A7C15ull;
    return (size_t)(pair ^ (pair >> 29));
}

/* The slot holding the merge rule of (left, right), or the empty slot where it goes. */
static merge_slot *merge_slot_of(merge_slot *merges, size_t mask, int32_t left, int32_t right)
{
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = pair_hash(pair) & mask;; i = (i + 1) & mask)
        if (merges[i].pair == pair || merges[i].pair == EMPTY_PAIR) return &merges[i];
}

/* Parse merges.txt: one "left right" pair per line, rank = order of the lines.
 * A "#version" line and blank lines are skipped; both halves and their
 * concatenation must be tokens. A pair listed twice keeps its later rank, like
 * GPT-2's and Hugging Face's loaders. */
static int load_merges(pikv_tokenizer *t, vocab_loader *v, const char *text, size_t size)
{
    size_t n_lines = 1;
    for (size_t i = 0; i < size; i++) n_lines += text[i] == '\n';
    size_t cap = table_capacity(n_lines);
    t->merge_mask = cap - 1;
    t->merges = pk_malloc_array(cap, sizeof *t->merges, "merge rules");
    int rc = t->merges ? 0 : -1;
    for (size_t i = 0; i < cap && rc == 0; i++) t->merges[i].pair = EMPTY_PAIR;

    uint32_t rank = 0;
    size_t line_no = 0;
    for (const char *line = text; line < text + size && rc == 0;) {
        const char *eol = memchr(line, '\n', (size_t)(text + size - line));
        if (!eol) eol = text + size;
        const char *next_line = eol + 1;
        line_no++;
        if (eol > line && eol[-1] == '\r') eol--;
        size_t len = (size_t)(eol - line);
        const char *space = memchr(line, ' ', len);
        if (len == 0 || (len >= 8 && memcmp(line, "#version", 8) == 0)) {
            line = next_line;
            continue;
        }
        if (!space || space == line || space + 1 == eol || memchr(space + 1, ' ', (size_t)(eol - space - 1))) {
            rc = pk_fail("line %zu: expected two tokens separated by one space", line_no);
            break;
        }
        size_t left_len = (size_t)(space - line), right_len = (size_t)(eol - space - 1);
        int32_t left = vocab_find(v, line, left_len, "", 0);
        int32_t right = vocab_find(v, space + 1, right_len, "", 0);
        int32_t merged = vocab_find(v, line, left_len, space + 1, right_len);
        if (left < 0 || right < 0) {
            int bad_len = (int)(left < 0 ? left_len : right_len);
            const char *bad = left < 0 ? line : space + 1;
            rc = pk_fail("line %zu: token \"%.*s\" is not in vocab.json", line_no,
                         bad_len > 64 ? 64 : bad_len, bad);
        } else if (merged < 0) {
            rc = pk_fail("line %zu: the merged token \"%.*s%.*s\" is not in vocab.json", line_no,
                         (int)left_len, line, (int)right_len, space + 1);
        } else {
            merge_slot *slot = merge_slot_of(t->merges, t->merge_mask, left, right);
            *slot = (merge_slot){(uint64_t)(uint32_t)left << 32 | (uint32_t)right, rank++, merged};
        }
        line = next_line;
    }
    return rc;
}

/* ---- the id -> bytes table ------------------------------------------------ */

/* Build the decoding table: every vocabulary token and special token with the
 * bytes it stands for. A special token's entry replaces a vocabulary entry with
 * the same id, as Hugging Face's added vocabulary does. */
static int build_pieces(pikv_tokenizer *t, const vocab_loader *v)
{
    int32_t max_id = v->max_id;
    size_t total = v->key_bytes;
    for (int i = 0; i < t->n_specials; i++) {
        if (t->specials[i].id > max_id) max_id = t->specials[i].id;
        total += t->specials[i].len;
    }
    t->n_ids = max_id + 1;
    t->pieces = pk_malloc_array((size_t)t->n_ids, sizeof *t->pieces, "token table");
    t->piece_bytes = pk_malloc(total, "token bytes");
    if (!t->pieces || !t->piece_bytes) return -1;

    uint32_t to_codepoint[256];
    int16_t to_byte[BYTE_LEVEL_CODEPOINTS];
    byte_level_tables(to_codepoint, to_byte);
    for (int32_t id = 0; id < t->n_ids; id++) t->pieces[id] = (token_piece){0, -1};
    size_t used = 0;
    for (size_t i = 0; i <= v->mask; i++) {
        const vocab_entry *e = &v->map[i];
        if (!e->key) continue;
        size_t n = byte_level_decode(to_byte, e->key, e->len, t->piece_bytes + used);
        t->pieces[e->id] = (token_piece){used, (int32_t)n};
        used += n;
    }
    for (int i = 0; i < t->n_specials; i++) {
        const special_token *s = &t->specials[i];
        size_t n = byte_level_decode(to_byte, s->text, s->len, t->piece_bytes + used);
        t->pieces[s->id] = (token_piece){used, (int32_t)n};
        used += n;
    }
    return 0;
}

/* ---- loading ----------------------------------------------------------------- */

typedef int (*load_step)(pikv_tokenizer *t, vocab_loader *v, const char *text, size_t size);

/* Where the tokenizer's files come from: the directory dir, or, when dir is
 * NULL, the named buffers of files. */
typedef struct tokenizer_source {
    const char *dir;
    const pk_tokenizer_file *files;
    size_t n_files;
} tokenizer_source;

/* Copy the buffer named `name` into a NUL-terminated allocation, as read_file
 * would read the file. Returns 1 when it is absent and `optional` is set. */
static int copy_buffer(const tokenizer_source *src, const char *name, int optional, char **text,
                       size_t *size)
{
    *text = NULL;
    *size = 0;
    for (size_t i = 0; i < src->n_files; i++) {
        const pk_tokenizer_file *f = &src->files[i];
        if (strcmp(f->name, name) != 0) continue;
        char *copy = pk_malloc(f->len + 1, "file contents");
        if (!copy) return -1;
        if (f->len) memcpy(copy, f->data, f->len);
        copy[f->len] = '\0';
        *text = copy;
        *size = f->len;
        return 0;
    }
    return optional ? 1 : pk_fail("not given");
}

/* Run one loading step on the contents of `file`; its error message gets the
 * file's path (or, from memory, its name) in front. Returns 1 when an optional
 * file is absent. */
static int load_file(pikv_tokenizer *t, vocab_loader *v, const tokenizer_source *src, const char *file,
                     int optional, load_step step)
{
    char *path = NULL, *text;
    size_t size;
    int rc, read_failed = 0;
    if (src->dir) {
        if (!(path = join_path(src->dir, file))) return pk_fail_prefix("%s", src->dir);
        rc = read_file(path, optional, &text, &size);
        read_failed = rc < 0;
    } else {
        rc = copy_buffer(src, file, optional, &text, &size);
    }
    if (rc == 0) {
        rc = step(t, v, text, size);
        pk_free(text);
    }
    /* A read error already names the path; a step's error gets it in front. */
    if (rc < 0 && !read_failed) pk_fail_prefix("%s", path ? path : file);
    pk_free(path);
    return rc;
}

/* Load vocab.json, the special tokens and merges.txt from a source. */
static pikv_tokenizer *load_tokenizer(const tokenizer_source *src)
{
    const char *where = src->dir ? src->dir : "tokenizer files";
    vocab_loader v = {0};
    pikv_tokenizer *t = pk_calloc(1, sizeof *t, "tokenizer");
    int rc = t ? 0 : pk_fail_prefix("%s", where);
    if (rc == 0) rc = load_file(t, &v, src, "vocab.json", 0, load_vocab);
    if (rc == 0) {
        rc = load_file(t, &v, src, "tokenizer.json", 1, load_added_tokens);
        if (rc > 0) rc = load_file(t, &v, src, "tokenizer_config.json", 1, load_config_tokens);
        if (rc > 0) rc = 0;
    }
    if (rc == 0) {
        static const char end_of_text[] = "<|endoftext|>";
        int32_t id = vocab_find(&v, end_of_text, sizeof end_of_text - 1, "", 0);
        if (id >= 0 && add_special(t, end_of_text, id) < 0) rc = pk_fail_prefix("%s", where);
    }
    if (rc == 0 && drop_repeated_specials(t) < 0) rc = pk_fail_prefix("%s", where);
    if (rc == 0) rc = load_file(t, &v, src, "merges.txt", 0, load_merges);
    if (rc == 0 && build_pieces(t, &v) < 0) rc = pk_fail_prefix("%s", where);
    cJSON_Delete(v.json);
    pk_free(v.map);
    if (rc < 0) {
        pikv_tokenizer_free(t);
        return NULL;
    }
    if (t->n_specials > 1)
        qsort(t->specials, (size_t)t->n_specials, sizeof *t->specials, longer_special_first);
    for (int i = 0; i < t->n_specials; i++)
        t->special_first_byte[(unsigned char)t->specials[i].text[0]] = 1;
    return t;
}

/* Load vocab.json, the special tokens and merges.txt from a model directory. */
pikv_tokenizer *pikv_tokenizer_load(const char *dir)
{
    if (!dir) {
        pk_fail("pikv_tokenizer_load: directory is NULL");
        return NULL;
    }
    return load_tokenizer(&(tokenizer_source){dir, NULL, 0});
}

/* The same from buffers in memory: the fuzzers' entry point. */
pikv_tokenizer *pk_tokenizer_from_buffers(const pk_tokenizer_file *files, size_t n_files)
{
    for (size_t i = 0; i < n_files; i++)
        if (!files[i].name || (!files[i].data && files[i].len)) {
            pk_fail("pk_tokenizer_from_buffers: file %zu has no name or no data", i);
            return NULL;
        }
    return load_tokenizer(&(tokenizer_source){NULL, files, n_files});
}

/* Release a tokenizer and everything it owns (NULL is fine). */
void pikv_tokenizer_free(pikv_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_specials; i++) pk_free(t->specials[i].text);
    pk_free(t->specials);
    pk_free(t->merges);
    pk_free(t->pieces);
    pk_free(t->piece_bytes);
    pk_free(t);
}

/* Number of ids: one past the largest id of the vocabulary and special tokens. */
int pikv_tokenizer_vocab_size(const pikv_tokenizer *t)
{
    if (!t) return pk_fail("pikv_tokenizer_vocab_size: tokenizer is NULL");
    return t->n_ids;
}

/* A tokenizer whose ids run past the model's embedding rows would make the
 * forward pass refuse (or, in a caller that skips the check, read) rows that
 * are not there: refuse the pair up front. */
int pikv_tokenizer_check_model(const pikv_tokenizer *t, const pikv_model *m)
{
    if (!t || !m) return pk_fail("pikv_tokenizer_check_model: tokenizer or model is NULL");
    int model_vocab = pikv_model_config(m)->vocab_size;
    if (t->n_ids > model_vocab)
        return pk_fail("the tokenizer has ids up to %d but the model's vocab_size is %d: they do not belong together",
                       t->n_ids - 1, model_vocab);
    return 0;
}

/* ---- encoding --------------------------------------------------------------- */

/* Character classes as GPT-2's pattern sees them. Per byte of the text, the class
 * of the character starting there sits in the low nibble and its byte length in
 * the high nibble; continuation bytes hold 0. */
enum { CLASS_LETTER = 1, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER };
#define CLASS_OF(c) ((c) & 0x0F)
#define LENGTH_OF(c) ((size_t)(c) >> 4)

/* \p{L}, \p{N}, \s or anything else. \s is Unicode White_Space, as in the regex
 * engines GPT-2 and Hugging Face use: \t..\r, U+0085 and the Zs, Zl, Zp separators
 * (so U+00A0, U+2000..U+200A and U+3000 are spaces; U+001C..U+001F and U+200B are not). */
static unsigned char char_class(utf8proc_int32_t cp)
{
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return CLASS_SPACE;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        return CLASS_LETTER;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return CLASS_NUMBER;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP:
        return CLASS_SPACE;
    default:
        return CLASS_OTHER;
    }
}

/* Check that the text is valid UTF-8 and fill classes. */
static int classify_text(const unsigned char *s, size_t len, unsigned char *classes)
{
    unsigned char ascii[128];
    for (int c = 0; c < 128; c++) ascii[c] = (unsigned char)(char_class(c) | 1 << 4);
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) {
            classes[i] = ascii[s[i]];
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        size_t n = utf8_char(s + i, len - i, &cp);
        if (n == 0) return pk_fail("invalid UTF-8 at byte %zu of the text", i);
        classes[i] = (unsigned char)(char_class(cp) | n << 4);
        memset(classes + i + 1, 0, n - 1);
        i += n;
    }
    return 0;
}

/* Length of the pre-token starting at byte p of the segment ending at byte end:
 * the first alternative of GPT-2's pattern that matches there, as the regex would
 * take it. */
static size_t pretoken_length(const unsigned char *s, const unsigned char *classes,
                              size_t p, size_t end)
{
    /* 's|'t|'re|'ve|'m|'ll|'d */
    if (s[p] == '\'' && p + 1 < end) {
        unsigned char c = s[p + 1], d = p + 2 < end ? s[p + 2] : 0;
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
        if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return 3;
    }
    /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class */
    size_t q = p;
    int kind = CLASS_OF(classes[p]);
    if (s[p] == ' ' && p + 1 < end && CLASS_OF(classes[p + 1]) != CLASS_SPACE) {
        q = p + 1;
        kind = CLASS_OF(classes[q]);
    }
    if (kind != CLASS_SPACE) {
        while (q < end && CLASS_OF(classes[q]) == kind) q += LENGTH_OF(classes[q]);
        return q - p;
    }
    /* '\s+(?!\S)' leaves the last space of a run to the word after it; '\s+' takes
     * a run that ends the segment or is a single character. */
    size_t last = p;
    while (q < end && CLASS_OF(classes[q]) == CLASS_SPACE) {
        last = q;
        q += LENGTH_OF(classes[q]);
    }
    return q == end || last == p ? q - p : last - p;
}

/* A growing array of output ids. */
typedef struct id_list {
    int32_t *ids;
    size_t n, cap;
} id_list;

/* Make room for at least cap ids. */
static int id_list_reserve(id_list *out, size_t cap)
{
    if (cap <= out->cap) return 0;
    int32_t *grown = pk_realloc(out->ids, cap * sizeof *grown, "token ids");
    if (!grown) return -1;
    out->ids = grown;
    out->cap = cap;
    return 0;
}

/* Append one id, doubling the array when it is full. */
static int id_list_push(id_list *out, int32_t id)
{
    if (out->n == out->cap && id_list_reserve(out, out->cap ? out->cap * 2 : 16) < 0) return -1;
    out->ids[out->n++] = id;
    return 0;
}

/* BPE working memory, reused across pre-tokens: the symbols of the word as a
 * doubly linked list (merged-away symbols drop out) and a min-heap of candidate
 * merges ordered by rank, then position (the leftmost of equal pairs first). */
typedef struct bpe_symbol {
    int32_t id, prev, next;
} bpe_symbol;

typedef struct bpe_candidate {
    uint32_t rank, pos;
    int32_t left, right;   /* the ids the pair had when queued, to spot stale entries */
    int32_t merged;
} bpe_candidate;

typedef struct bpe_work {
    bpe_symbol *symbols;
    bpe_candidate *heap;
    size_t cap, heap_len;
} bpe_work;

/* Make room for a word of n bytes: n symbols, and up to 3n heap entries (n - 1
 * initial pairs plus two new pairs per merge). */
static int bpe_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap) return 0;
    if (n > INT32_MAX) return pk_fail("a pre-token of %zu bytes is too long to encode", n);
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n) cap *= 2;
    bpe_symbol *symbols = pk_malloc_array(cap, sizeof *symbols, "BPE symbols");
    bpe_candidate *heap = symbols ? pk_malloc_array(cap, 3 * sizeof *heap, "BPE merge queue") : NULL;
    if (!heap) {
        pk_free(symbols);
        return -1;
    }
    pk_free(w->symbols);
    pk_free(w->heap);
    w->symbols = symbols;
    w->heap = heap;
    w->cap = cap;
    return 0;
}

/* Heap order: lower rank first, then the leftmost position. */
static int candidate_before(const bpe_candidate *a, const bpe_candidate *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

/* Queue the pair starting at symbol pos when the merges list it. */
static void bpe_queue_pair(const pikv_tokenizer *t, bpe_work *w, int32_t pos)
{
    const bpe_symbol *sym = w->symbols;
    if (pos < 0 || sym[pos].next < 0) return;
    int32_t left = sym[pos].id, right = sym[sym[pos].next].id;
    const merge_slot *m = merge_slot_of(t->merges, t->merge_mask, left, right);
    if (m->pair == EMPTY_PAIR) return;
    bpe_candidate c = {m->rank, (uint32_t)pos, left, right, m->merged};
    size_t i = w->heap_len++;
    while (i > 0 && candidate_before(&c, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = c;
}

/* Remove and return the best candidate of a non-empty heap. */
static bpe_candidate bpe_pop(bpe_work *w)
{
    bpe_candidate top = w->heap[0], last = w->heap[--w->heap_len];
    size_t i = 0, n = w->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_before(&w->heap[child + 1], &w->heap[child])) child++;
        if (!candidate_before(&w->heap[child], &last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

/* Byte-pair encode one pre-token: start from its single-byte tokens and apply the
 * best-ranked listed merge until none applies; append the resulting ids. */
static int bpe_word(const pikv_tokenizer *t, const unsigned char *word, size_t n,
                    bpe_work *w, id_list *out)
{
    if (n == 1) return id_list_push(out, t->byte_token[word[0]]);
    if (bpe_reserve(w, n) < 0) return -1;
    bpe_symbol *sym = w->symbols;
    for (size_t i = 0; i < n; i++)
        sym[i] = (bpe_symbol){t->byte_token[word[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    w->heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) bpe_queue_pair(t, w, (int32_t)i);
    while (w->heap_len > 0) {
        bpe_candidate c = bpe_pop(w);
        int32_t pos = (int32_t)c.pos, right = sym[pos].next;
        if (sym[pos].id != c.left || right < 0 || sym[right].id != c.right) continue;
        sym[pos].id = c.merged;
        sym[pos].next = sym[right].next;
        if (sym[right].next >= 0) sym[sym[right].next].prev = pos;
        sym[right].id = -1;
        bpe_queue_pair(t, w, sym[pos].prev);
        bpe_queue_pair(t, w, pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (id_list_push(out, sym[i].id) < 0) return -1;
    return 0;
}

/* Encode the text bytes [start, end), which hold no special token. */
static int encode_segment(const pikv_tokenizer *t, const unsigned char *s,
                          const unsigned char *classes, size_t start, size_t end,
                          bpe_work *w, id_list *out)
{
    for (size_t p = start; p < end;) {
        size_t n = pretoken_length(s, classes, p, end);
        if (bpe_word(t, s + p, n, w, out) < 0) return -1;
        p += n;
    }
    return 0;
}

/* The longest special token that starts at s (n bytes available), or NULL. */
static const special_token *special_at(const pikv_tokenizer *t, const unsigned char *s, size_t n)
{
    if (!t->special_first_byte[s[0]]) return NULL;
    for (int i = 0; i < t->n_specials; i++) {
        const special_token *sp = &t->specials[i];
        if (sp->len <= n && memcmp(sp->text, s, sp->len) == 0) return sp;
    }
    return NULL;
}

/* Encode UTF-8 text: split around special tokens, then pre-tokenize and
 * byte-pair encode each piece in between. */
int pikv_tokenize(const pikv_tokenizer *t, const char *text, size_t len,
                  int32_t **ids, size_t *n_ids)
{
    if (!t || !ids || !n_ids || (!text && len))
        return pk_fail("pikv_tokenize: NULL tokenizer, text or output");
    *ids = NULL;
    *n_ids = 0;
    const unsigned char *s = (const unsigned char *)text;
    id_list out = {0};
    bpe_work work = {0};
    unsigned char *classes = pk_malloc(len, "character classes");
    int rc = classes && classify_text(s, len, classes) == 0 &&
             id_list_reserve(&out, len / 4 + 16) == 0 ? 0 : -1;
    size_t segment = 0;
    for (size_t p = 0; p < len && rc == 0;) {
        const special_token *sp = special_at(t, s + p, len - p);
        if (!sp) {
            p++;
            continue;
        }
        rc = encode_segment(t, s, classes, segment, p, &work, &out);
        if (rc == 0) rc = id_list_push(&out, sp->id);
        p += sp->len;
        segment = p;
    }
    if (rc == 0) rc = encode_segment(t, s, classes, segment, len, &work, &out);
    pk_free(classes);
    pk_free(work.symbols);
    pk_free(work.heap);
    if (rc < 0) {
        pk_free(out.ids);
        return -1;
    }
    *ids = out.ids;
    *n_ids = out.n;
    return 0;
}

/* ---- decoding ---------------------------------------------------------------- */

/* Concatenate the bytes of each id into one NUL-terminated buffer. */
char *pikv_detokenize(const pikv_tokenizer *t, const int32_t *ids, size_t n_ids, size_t *len)
{
    if (len) *len = 0;
    if (!t || (!ids && n_ids)) {
        pk_fail("pikv_detokenize: NULL tokenizer or ids");
        return NULL;
    }
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || t->pieces[ids[i]].len < 0) {
            pk_fail("token id %ld at position %zu is not in the vocabulary (0..%d)",
                    (long)ids[i], i, t->n_ids - 1);
            return NULL;
        }
        total += (size_t)t->pieces[ids[i]].len;
    }
    char *bytes = pk_malloc(total + 1, "decoded text");
    if (!bytes) return NULL;
    size_t used = 0;
    for (size_t i = 0; i < n_ids; i++) {
        const token_piece *piece = &t->pieces[ids[i]];
        memcpy(bytes + used, t->piece_bytes + piece->offset, (size_t)piece->len);
        used += (size_t)piece->len;
    }
    bytes[used] = '\0';
    if (len) *len = used;
    return bytes;
}
