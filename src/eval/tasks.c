#include "eval/tasks.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* Words to name magic numbers by: short, common, one per needle. */
static const char *const words[] = {
    "apple",  "river",  "candle", "falcon", "garden", "harbor", "island", "jacket", "kettle", "lantern",
    "marble", "needle", "orange", "pepper", "quartz", "rocket", "saddle", "tunnel", "velvet", "window",
    "anchor", "bridge", "copper", "dragon", "engine", "forest", "glacier", "hammer", "insect", "jungle",
    "ladder", "meadow",
};
enum { N_WORDS = sizeof words / sizeof *words };

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int pk_haystack_load(pk_haystack *h, const pikv_tokenizer *tok, const char *path)
{
    memset(h, 0, sizeof *h);
    size_t len;
    char *text = pk_read_file(path, PK_MAX_TEXT_BYTES, &len);
    if (!text) return -1;
    size_t n = 0;
    int rc = pikv_tokenize(tok, text, len, &h->ids, &n);
    pk_free(text);
    if (rc) return pk_fail_prefix("%s", path);
    h->tok = tok;
    h->n_ids = (int)n;
    return 0;
}

void pk_haystack_free(pk_haystack *h)
{
    pk_free(h->ids);
    memset(h, 0, sizeof *h);
}

void pk_task_free(pk_task *t)
{
    pk_free(t->context);
    pk_free(t->question);
    memset(t, 0, sizeof *t);
}

/* Tokenize a sentence into freshly allocated ids. */
static int tokenize_text(const pikv_tokenizer *tok, const char *text, int32_t **ids, int *n)
{
    size_t count;
    if (pikv_tokenize(tok, text, strlen(text), ids, &count)) return -1;
    *n = (int)count;
    return 0;
}

int pk_task_make(const pk_haystack *h, pk_task_kind kind, int needles, int context_tokens, double depth,
                 uint64_t seed, pk_task *out)
{
    memset(out, 0, sizeof *out);
    if (kind == PK_TASK_PASSKEY) needles = 1;
    if (needles < 1 || needles > 4) return pk_fail("task: %d needles (1 to 4)", needles);
    if (!(depth >= 0 && depth <= 1)) return pk_fail("task: depth %g outside [0, 1]", depth);
    uint64_t rng = seed * 0x2545f4914f6cdd1dull + 1;
    int32_t *needle_ids[4] = {0};
    int needle_n[4] = {0}, total_needles = 0, rc = -1;
    double depths[4];
    char sentence[256], question[256];
    int asked = (int)(next_random(&rng) % (uint64_t)needles);
    int word0 = (int)(next_random(&rng) % N_WORDS);
    for (int i = 0; i < needles; i++) {
        if (kind == PK_TASK_PASSKEY) {
            unsigned key = 10000 + (unsigned)(next_random(&rng) % 9990000);
            snprintf(sentence, sizeof sentence, " The pass key is %u. Remember it. %u is the pass key.", key, key);
            snprintf(out->answer, sizeof out->answer, "%u", key);
            snprintf(question, sizeof question, " What is the pass key? The pass key is");
        } else {
            unsigned number = 100000 + (unsigned)(next_random(&rng) % 9900000);
            const char *word = words[(word0 + i) % N_WORDS];
            snprintf(sentence, sizeof sentence, " One of the special magic numbers for %s is: %u.", word, number);
            if (i == asked) {
                snprintf(out->answer, sizeof out->answer, "%u", number);
                snprintf(question, sizeof question,
                         " What is the special magic number for %s mentioned in the provided text? The special "
                         "magic number for %s mentioned in the provided text is",
                         word, word);
            }
        }
        if (tokenize_text(h->tok, sentence, &needle_ids[i], &needle_n[i])) goto done;
        total_needles += needle_n[i];
        depths[i] = i == asked ? depth : (double)(next_random(&rng) % 1001) / 1000.0;
    }
    const int filler = context_tokens - total_needles;
    if (filler < 1 || filler > h->n_ids) {
        pk_fail("task: a context of %d tokens cannot hold %d needle tokens and filler from a haystack of %d",
                context_tokens, total_needles, h->n_ids);
        goto done;
    }
    if (tokenize_text(h->tok, question, &out->question, &out->n_question)) goto done;
    const int start = (int)(next_random(&rng) % (uint64_t)(h->n_ids - filler + 1));
    if (!(out->context = pk_malloc_array((size_t)context_tokens, sizeof *out->context, "task context"))) goto done;
    /* Lay out the filler, dropping each needle in at its depth (shallowest first). */
    int placed[4] = {0}, n = 0;
    for (int f = 0; f <= filler; f++) {
        for (;;) {
            int next = -1;
            for (int i = 0; i < needles; i++)
                if (!placed[i] && (int)(depths[i] * filler + 0.5) <= f && (next < 0 || depths[i] < depths[next]))
                    next = i;
            if (next < 0) break;
            if (next == asked) out->needle_start = n, out->needle_len = needle_n[next];
            memcpy(out->context + n, needle_ids[next], (size_t)needle_n[next] * sizeof *out->context);
            n += needle_n[next];
            placed[next] = 1;
        }
        if (f < filler) out->context[n++] = h->ids[start + f];
    }
    out->n_context = n;
    rc = 0;
done:
    for (int i = 0; i < needles; i++) pk_free(needle_ids[i]);
    if (rc) pk_task_free(out);
    return rc;
}

/* The slot's depth is computed as depth_span * (slot / last) and its length
 * as span * slot / last in integers: the tasks, and every accuracy measured on
 * them, depend on these exact roundings. */
int pk_task_mix_make(const pk_haystack *h, const pk_task_mix *mix, int i, pk_task *out)
{
    const int n = mix->n_tasks, kind = i % 5;
    const int span = mix->max_tokens - mix->min_tokens;
    const int tokens = mix->min_tokens + (n > 1 ? (int)((long)span * ((i * mix->length_stride) % n) / (n - 1)) : 0);
    const double depth = n > 1 ? mix->min_depth + mix->depth_span * ((double)((i * mix->depth_stride) % n) / (n - 1))
                               : mix->lone_depth;
    return pk_task_make(h, kind == 0 ? PK_TASK_PASSKEY : PK_TASK_MAGIC, kind == 0 ? 1 : kind, tokens, depth,
                        mix->seed + (uint64_t)i, out);
}

int pk_task_correct(const pikv_tokenizer *tok, const pk_task *t, const int32_t *ids, int n)
{
    char *text = pikv_detokenize(tok, ids, (size_t)n, NULL);
    if (!text) return 0;
    const char *p = text;
    while (*p && !isdigit((unsigned char)*p)) p++;
    size_t digits = strspn(p, "0123456789");
    int ok = digits == strlen(t->answer) && strncmp(p, t->answer, digits) == 0;
    pk_free(text);
    return ok;
}
