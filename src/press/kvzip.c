/* kvzip: query-agnostic compression by context reconstruction (KVzip, Kim et
 * al., 2025). After the context is prefilled, the engine asks the model to
 * repeat it -- a short prompt, then the context again, teacher-forced, against
 * the full cache -- and records, for every (layer, head, cached entry), the
 * largest attention weight any query of the repeated copy gives it (the
 * prompt's own queries are not counted: they have not started to reproduce
 * anything). An entry the model needs to reproduce its context is one a later
 * question is likely to need. This press only decides from those scores
 * (view->recon_scores): the engine runs the reconstruction
 * (PK_PRESS_RECONSTRUCTION_SCORES).
 *
 * Budgets: layerwise=0 (default, as KVzip does) keeps the model's
 * floor(N * (1 - ratio)) highest scores, N being every scored entry of every
 * layer and head, so that layers and heads the copy leans on keep more;
 * layerwise=1 gives each layer sum over its heads of floor(len * (1 - ratio))
 * entries, shared across the heads of the layer (the highest scores of the
 * layer win, no per-head safeguard). The first `sink` positions are always
 * kept. Streaming heads (a duo press before it in a composition) keep their
 * window and take no share of the budget: with layerwise=0 a full head keeps
 * exactly its entries among the model's highest scores, as it would alone.
 *
 * The engine runs the prompt once, then the copy as windows of `chunk`
 * context tokens, each starting again right after the prompt and seeing the
 * cache and its own earlier tokens (KVzip too scores long contexts chunk by
 * chunk). GPT-2's positions are absolute and end at n_positions, so a window
 * is capped to what fits after the context and the prompt; when not even the
 * prompt and one token fit
 * after the context, the prefill fails and says so (no shifting of positions:
 * the scores would no longer come from the positions the cache holds). */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The reconstruction prompt, in pikv's words; prompt_file=PATH gives another
 * (a file, since spec values cannot hold spaces and punctuation). */
static const char kvzip_prompt[] = "\n\nRepeat the text above, word for word:\n";
enum { MAX_PROMPT_BYTES = 1 << 16 };

/* The prompt's token ids: the file's text when prompt_file is given (not
 * empty, at most 64 KiB), else pikv's own. */
static int prompt_ids(const pk_spec *spec, const char *model_dir, int32_t **ids, size_t *n_ids)
{
    const char *path = pk_spec_get(spec, "prompt_file");
    size_t len = 0;
    char *text = NULL;
    if (path) {
        if (!(text = pk_read_file(path, MAX_PROMPT_BYTES, &len)))
            return pk_fail_prefix("press 'kvzip': prompt_file=%s", path);
        if (len == 0) {
            pk_free(text);
            return pk_fail("press 'kvzip': prompt_file=%s is empty", path);
        }
    }
    pikv_tokenizer *tok = pikv_tokenizer_load(model_dir);
    int rc = tok ? pikv_tokenize(tok, text ? text : kvzip_prompt, text ? len : strlen(kvzip_prompt), ids, n_ids) : -1;
    pikv_tokenizer_free(tok);
    pk_free(text);
    if (rc && path) return pk_fail_prefix("press 'kvzip': prompt_file=%s", path);
    if (rc) return pk_fail_prefix("press 'kvzip': its prompt");
    return 0;
}

typedef struct {
    int sink;
    int layerwise;
} kvzip_params;

typedef struct {
    float score;
    int layer, head, index;
} scored_entry;

/* Highest score first; ties to the lower layer, head, then earlier entry. */
static int by_score_then_place(const void *a, const void *b)
{
    const scored_entry *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->layer != y->layer) return x->layer - y->layer;
    if (x->head != y->head) return x->head - y->head;
    return x->index - y->index;
}

/* The recorded score of position pos of (layer, head); sinks score +inf. */
static float entry_score(const kvzip_params *kp, const pk_press_view *v, int layer, int head, int pos)
{
    if (pos < kp->sink) return INFINITY;
    return pos < v->recon_len ? v->recon_scores[layer][head][pos] : 0.f;
}

/* A float's bits as an unsigned key that orders like the value (NaN aside). */
static uint32_t order_key(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u >> 31 ? ~u : u | 0x80000000u;
}

/* The k-th highest (1 <= k <= n) of n keys, in linear time: a histogram of
 * their high 16 bits finds the bin that holds it, a second of the low 16 bits
 * within that bin the key. */
static int kth_highest_key(const uint32_t *keys, size_t n, size_t k, uint32_t *key)
{
    size_t *count = pk_calloc(1u << 16, sizeof *count, "kvzip selection");
    if (!count) return -1;
    size_t above = 0;
    uint32_t high = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const uint32_t u = keys[i];
            if (pass == 0) count[u >> 16]++;
            else if (u >> 16 == high) count[u & 0xffffu]++;
        }
        uint32_t bin = 0xffffu;
        while (above + count[bin] < k) above += count[bin--];
        if (pass == 0) {
            high = bin;
            memset(count, 0, (1u << 16) * sizeof *count);
        } else {
            *key = high << 16 | bin;
        }
    }
    pk_free(count);
    return 0;
}

/* layerwise=0: how many entries of the full heads of layer v->layer are
 * among the model's floor(N * (1 - ratio)) highest scores, N = n_layer *
 * n_head * recon_len, ties going to the lower layer, head, then position (the
 * entries streaming heads win are not handed to the full heads). The k-th
 * highest score is found in linear time, since every layer asks. */
static int global_layer_budget(const pk_press *p, const pk_press_view *v, size_t *budget)
{
    const kvzip_params *kp = p->params;
    const int NL = v->cfg->n_layer, H = v->cfg->n_head, L = v->recon_len;
    const size_t n = (size_t)NL * (size_t)H * (size_t)L, keep = (size_t)((double)n * (1.0 - p->ratio));
    *budget = 0;
    if (keep == 0) return 0;
    uint32_t *keys = pk_malloc_array(n, sizeof *keys, "kvzip selection");
    if (!keys) return -1;
    size_t m = 0; /* keys[] in place order: layer, head, position */
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < L; j++) keys[m++] = order_key(entry_score(kp, v, l, h, j));
    uint32_t cut;
    if (kth_highest_key(keys, n, keep, &cut)) {
        pk_free(keys);
        return -1;
    }
    size_t ties = keep; /* the cut's ties that still make the top, in place order */
    for (size_t i = 0; i < n; i++) ties -= keys[i] > cut;
    /* Layers after this one cannot change its count: stop at its end. */
    m = 0;
    for (int l = 0; l <= v->layer; l++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < L; j++, m++) {
                int in_top = keys[m] > cut;
                if (keys[m] == cut && ties > 0) {
                    in_top = 1;
                    ties--;
                }
                *budget += in_top && l == v->layer && !pk_press_head(v, h)->recent;
            }
    pk_free(keys);
    return 0;
}

/* Keep the layer's budget of highest reconstruction scores across its full
 * heads; streaming heads stay as they are. */
static int kvzip_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    if (p->ratio == 0) return 0;
    if (!v->recon_scores) return pk_fail("press 'kvzip' has no reconstruction scores (the engine runs it)");
    const kvzip_params *kp = p->params;
    const int H = v->cfg->n_head;
    size_t total = 0, budget = 0;
    for (int h = 0; h < H; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        if (kh->recent) continue;
        total += (size_t)kh->len;
        budget += (size_t)pk_press_n_kept(kh->len, p->ratio);
    }
    if (!kp->layerwise && global_layer_budget(p, v, &budget)) return -1;
    if (budget > total) budget = total;
    float **scores = pk_press_alloc_scores(v);
    int *n_keep = pk_calloc((size_t)H, sizeof *n_keep, "kvzip budgets");
    scored_entry *all = pk_malloc_array(total ? total : 1, sizeof *all, "kvzip selection");
    int rc = -1;
    if (!scores || !n_keep || !all) goto done;
    size_t m = 0;
    for (int h = 0; h < H; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        for (int j = 0; j < kh->len; j++) scores[h][j] = entry_score(kp, v, v->layer, h, kh->pos[j]);
        if (kh->recent) {
            n_keep[h] = kh->len;
            continue;
        }
        for (int j = 0; j < kh->len; j++) all[m++] = (scored_entry){scores[h][j], v->layer, h, j};
    }
    qsort(all, m, sizeof *all, by_score_then_place);
    for (size_t i = 0; i < budget; i++) n_keep[all[i].head]++;
    rc = pk_press_keep_top(v, scores, n_keep, out);
done:
    pk_free(all);
    pk_free(n_keep);
    pk_press_free_scores(v, scores);
    return rc;
}

static const pk_press_ops kvzip_ops = {.select = kvzip_select};

int pk_build_kvzip(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "chunk", "sink", "layerwise", "prompt_file", NULL};
    double ratio;
    int chunk, sink, layerwise;
    *out = NULL;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_spec_int(spec, "chunk", 256, 1, 1 << 20, &chunk) ||
        pk_spec_int(spec, "sink", 4, 0, 1 << 20, &sink) || pk_spec_int(spec, "layerwise", 0, 0, 1, &layerwise))
        return -1;
    if (!env->model_dir) return pk_fail("press 'kvzip' needs the model directory, to tokenize its prompt");
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (prompt_ids(spec, env->model_dir, &ids, &n_ids)) return -1;
    if (pk_press_new("kvzip", &kvzip_ops, ratio, sizeof(kvzip_params), out)) {
        pikv_free(ids);
        return -1;
    }
    pk_press *p = *out;
    p->caps = PK_PRESS_RECONSTRUCTION_SCORES;
    p->recon_chunk = chunk;
    p->n_recon_prompt = (int)n_ids;
    p->recon_prompt = pk_malloc_array(n_ids, sizeof *ids, "kvzip prompt");
    if (p->recon_prompt) memcpy(p->recon_prompt, ids, n_ids * sizeof *ids);
    pikv_free(ids);
    if (!p->recon_prompt) {
        pk_press_destroy(p);
        *out = NULL;
        return -1;
    }
    ((kvzip_params *)p->params)->sink = sink;
    ((kvzip_params *)p->params)->layerwise = layerwise;
    return 0;
}
