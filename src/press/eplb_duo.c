/* eplb_duo: the seed's combined method, exactly as it composes it: the MoE
 * router press with the EPLB router takes eplb_share of the ratio, DuoAttention
 * the rest, applied in that order:
 *   eplb_duo:ratio=0.5,eplb_share=0.7 =
 *   composed[moe_router:router=eplb,experts=4,top_k=2,ratio=0.35, duo:ratio=0.15]
 * (the two ratios count different things, entries and heads, as in the seed;
 * what the composition really removes is what the cache reports). Decode
 * attention over the result is balanced across workers by EPLB when the session
 * runs with workers (pikv_session_set_workers). */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"

#include <stdio.h>

int pk_build_eplb_duo(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "eplb_share", "experts", "top_k", "pattern", NULL};
    double ratio, share;
    int experts, top_k;
    if (spec->n_children) return pk_fail("press 'eplb_duo' takes no inner press");
    if (pk_spec_check_keys(spec, keys) || pk_press_ratio_param(spec, 0.5, &ratio) ||
        pk_spec_double(spec, "eplb_share", 0.7, 0.0, 1.0, &share) ||
        pk_spec_int(spec, "experts", 4, 1, 256, &experts) || pk_spec_int(spec, "top_k", 2, 1, 256, &top_k))
        return -1;
    const char *pattern = pk_spec_get(spec, "pattern");
    char text[1400];
    snprintf(text, sizeof text, "composed[moe_router:router=eplb,experts=%d,top_k=%d,ratio=%.6g,duo:ratio=%.6g%s%s]",
             experts, top_k, ratio * share, ratio * (1.0 - share), pattern ? ",pattern=" : "", pattern ? pattern : "");
    pk_spec *composed;
    if (pk_spec_parse(text, &composed)) return pk_fail_prefix("press 'eplb_duo'");
    int rc = pk_press_build(composed, env, out);
    pk_spec_free(composed);
    if (rc) return pk_fail_prefix("press 'eplb_duo'");
    snprintf((*out)->name, sizeof (*out)->name, "eplb_duo");
    return 0;
}
