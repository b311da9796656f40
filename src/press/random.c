/* random: uniform random scores, the floor any real press must beat. The
 * draws depend only on (seed, layer, head, position), so a run is repeatable. */
#include "press/press.h"
#include "press/spec.h"

#include <stdint.h>

typedef struct {
    uint64_t seed;
} random_params;

/* splitmix64 finaliser: a well-mixed hash of one 64-bit word. */
static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int random_score(const pk_press *p, const pk_press_view *v, float **scores)
{
    const random_params *rp = p->params;
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        uint64_t base = mix(rp->seed ^ mix((uint64_t)v->layer << 32 | (uint64_t)h));
        for (int j = 0; j < kh->len; j++)
            scores[h][j] = (float)(mix(base ^ (uint64_t)kh->pos[j]) >> 40) / 16777216.f;
    }
    return 0;
}

static const pk_press_ops random_ops = {.score = random_score};

int pk_build_random(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    static const char *const keys[] = {"ratio", "seed", NULL};
    double ratio;
    int seed;
    if (pk_press_scorer_spec(spec, keys, &ratio) || pk_spec_int(spec, "seed", 0, 0, 2147483647, &seed)) return -1;
    if (pk_press_new("random", &random_ops, ratio, sizeof(random_params), out)) return -1;
    ((random_params *)(*out)->params)->seed = (uint64_t)seed;
    return 0;
}
