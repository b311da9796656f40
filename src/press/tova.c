/* tova: Token Omission Via Attention (Oren et al., 2024). An entry's score is
 * the attention the last query pays it, averaged over the heads of the layer,
 * so every head keeps the same positions; the last token always stays. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

static int tova_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    (void)p;
    const int H = v->cfg->n_head;
    const pk_kv_head *k0 = pk_press_head(v, 0);
    const int n = k0->len;
    for (int h = 1; h < H; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        if (kh->len != n || memcmp(kh->pos, k0->pos, (size_t)n * sizeof *k0->pos) != 0)
            return pk_fail("press 'tova': the heads of layer %d hold different positions (tova scores positions, "
                           "not heads: put it before head-wise presses)", v->layer);
    }
    double *att = pk_malloc_array((size_t)(n > 0 ? n : 1), sizeof *att, "tova attention");
    if (!att) return -1;
    for (int j = 0; j < n; j++) scores[0][j] = 0.f;
    for (int h = 0; h < H; h++) {
        if (pk_press_attention_sums(v, h, v->n_q - 1, 1, att)) {
            pk_free(att);
            return -1;
        }
        for (int j = 0; j < n; j++) scores[0][j] += (float)att[j] / (float)H;
    }
    const int32_t last = v->q_pos0 + v->n_q - 1;
    for (int j = 0; j < n; j++)
        if (k0->pos[j] == last) scores[0][j] = INFINITY;
    for (int h = 1; h < H; h++)
        for (int j = 0; j < n; j++) scores[h][j] = scores[0][j];
    pk_free(att);
    return 0;
}

static const pk_press_ops tova_ops = {.score = tova_score};

int pk_build_tova(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", NULL};
    double ratio;
    if (pk_press_scorer_spec(spec, keys, &ratio)) return -1;
    if (pk_press_new("tova", &tova_ops, ratio, 0, out)) return -1;
    (*out)->caps = PK_PRESS_MEASURED;
    return 0;
}
