/* chunkkv: keep whole chunks of consecutive entries instead of scattered
 * tokens, so that phrases survive intact (Liu et al., 2025). A chunk's score is
 * the mean over its tokens of the inner scores summed over heads; the top
 * max(1, floor(n_chunks * (1 - ratio))) chunks stay in every head (the last,
 * partial chunk counts as a chunk), as in kvpress's ChunkKVPress. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int chunk;
} chunkkv_params;

typedef struct {
    double score;
    int index;
} chunk_score;

static int by_chunk_score(const void *a, const void *b)
{
    const chunk_score *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->index - y->index;
}

static int chunkkv_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    if (p->ratio == 0) return 0;
    const int C = ((const chunkkv_params *)p->params)->chunk, H = v->cfg->n_head;
    const pk_kv_head *k0 = pk_press_head(v, 0);
    const int n = k0->len;
    for (int h = 1; h < H; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        if (kh->len != n || memcmp(kh->pos, k0->pos, (size_t)n * sizeof *k0->pos) != 0)
            return pk_fail("press 'chunkkv': the heads of layer %d hold different positions (chunkkv keeps the same "
                           "chunks in every head: put it before head-wise presses)", v->layer);
    }
    const int n_chunks = (n + C - 1) / C;
    int kept_chunks = (int)(n_chunks * (1.0 - p->ratio));
    if (kept_chunks < 1) kept_chunks = 1;
    float **scores = pk_press_alloc_scores(v);
    chunk_score *chunks = pk_malloc_array((size_t)n_chunks, sizeof *chunks, "chunkkv chunks");
    int *keep = pk_malloc_array((size_t)n, sizeof *keep, "chunkkv selection");
    int rc = -1;
    if (!scores || !chunks || !keep || p->inner[0]->ops->score(p->inner[0], v, scores)) goto done;
    for (int c = 0; c < n_chunks; c++) {
        int first = c * C, last = first + C < n ? first + C : n;
        double sum = 0;
        for (int j = first; j < last; j++)
            for (int h = 0; h < H; h++) sum += scores[h][j];
        chunks[c] = (chunk_score){sum / (last - first), c};
    }
    qsort(chunks, (size_t)n_chunks, sizeof *chunks, by_chunk_score);
    /* Mark the chosen chunks, then list their entries in storage order. */
    memset(keep, 0, (size_t)n * sizeof *keep);
    for (int i = 0; i < kept_chunks; i++)
        for (int j = chunks[i].index * C; j < n && j < (chunks[i].index + 1) * C; j++) keep[j] = 1;
    int m = 0;
    for (int j = 0; j < n; j++)
        if (keep[j]) keep[m++] = j;
    for (int h = 0; h < H; h++) {
        memcpy(out->keep[h], keep, (size_t)m * sizeof *keep);
        out->n_keep[h] = m;
    }
    rc = 0;
done:
    pk_free(keep);
    pk_free(chunks);
    pk_press_free_scores(v, scores);
    return rc;
}

static const pk_press_ops chunkkv_ops = {.select = chunkkv_select};

int pk_build_chunkkv(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "chunk", NULL};
    double ratio;
    int chunk;
    pk_press *inner;
    if (pk_spec_check_keys(spec, keys) || pk_press_ratio_param(spec, 0.0, &ratio) ||
        pk_spec_int(spec, "chunk", 20, 1, 1 << 20, &chunk) || pk_press_inner_scorer(spec, env, &inner))
        return -1;
    if (pk_press_wrap("chunkkv", &chunkkv_ops, ratio, sizeof(chunkkv_params), inner, out)) return -1;
    ((chunkkv_params *)(*out)->params)->chunk = chunk;
    return 0;
}
