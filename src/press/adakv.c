/* adakv: head-adaptive budgets (Feng et al., 2024). Heads do not need the same
 * number of entries: the layer's total budget (n_kept per head, summed) goes to
 * the highest scores of the whole layer, after a safeguard gives every head its
 * own top floor(alpha * n_kept). The heads end up with different lengths, and
 * since each head owns its memory, the savings are real. */
#include "press/press.h"
#include "press/spec.h"
#include "util/mem.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    double alpha;
} adakv_params;

typedef struct {
    float score;
    int head, index;
} scored_entry;

/* Highest score first; ties to the lower head, then the earlier entry (the
 * same order pk_press_keep_top uses inside one head). */
static int by_score_then_place(const void *a, const void *b)
{
    const scored_entry *x = a, *y = b;
    int xn = isnan(x->score), yn = isnan(y->score);
    if (xn != yn) return xn ? 1 : -1;
    if (x->score != y->score && !xn) return x->score > y->score ? -1 : 1;
    if (x->head != y->head) return x->head - y->head;
    return x->index - y->index;
}

static int adakv_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    if (p->ratio == 0) return 0;
    const adakv_params *ap = p->params;
    const int H = v->cfg->n_head;
    size_t total = 0;
    for (int h = 0; h < H; h++) total += (size_t)pk_press_head(v, h)->len;
    float **scores = pk_press_alloc_scores(v);
    int *n_keep = pk_calloc((size_t)H, sizeof *n_keep, "adakv budgets");
    scored_entry *all = pk_malloc_array(total, sizeof *all, "adakv selection");
    int rc = -1;
    if (!scores || !n_keep || !all || p->inner[0]->ops->score(p->inner[0], v, scores)) goto done;

    /* The safeguard: each head's own top floor(alpha * n_kept) cannot be outbid. */
    size_t budget = 0, m = 0;
    for (int h = 0; h < H; h++) {
        const int len = pk_press_head(v, h)->len, kept = pk_press_n_kept(len, p->ratio);
        const int safe = (int)(ap->alpha * kept);
        budget += (size_t)kept;
        size_t first = m;
        for (int j = 0; j < len; j++) all[m++] = (scored_entry){scores[h][j], h, j};
        qsort(all + first, (size_t)len, sizeof *all, by_score_then_place);
        for (int i = 0; i < safe; i++) scores[h][all[first + (size_t)i].index] = INFINITY;
    }
    /* The layer's budget to its highest scores, safeguarded ones first. */
    for (size_t i = 0; i < m; i++) all[i].score = scores[all[i].head][all[i].index];
    qsort(all, m, sizeof *all, by_score_then_place);
    for (size_t i = 0; i < budget; i++) n_keep[all[i].head]++;
    rc = pk_press_keep_top(v, scores, n_keep, out);
done:
    pk_free(all);
    pk_free(n_keep);
    pk_press_free_scores(v, scores);
    return rc;
}

static const pk_press_ops adakv_ops = {.select = adakv_select};

int pk_build_adakv(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "alpha", NULL};
    double ratio, alpha;
    pk_press *inner;
    if (pk_spec_check_keys(spec, keys) || pk_press_ratio_param(spec, 0.0, &ratio) ||
        pk_spec_double(spec, "alpha", 0.2, 0.0, 1.0, &alpha) || pk_press_inner_scorer(spec, env, &inner))
        return -1;
    if (pk_press_wrap("adakv", &adakv_ops, ratio, sizeof(adakv_params), inner, out)) return -1;
    ((adakv_params *)(*out)->params)->alpha = alpha;
    return 0;
}
