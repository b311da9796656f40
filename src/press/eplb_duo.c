/* eplb_duo: the combined method of PiKVpress's comparison, composed exactly as
 * it composes it: the MoE router press with the EPLB router takes eplb_share
 * of the ratio, DuoAttention the rest, applied in that order:
 *   eplb_duo:ratio=0.5,eplb_share=0.7 =
 *   composed[moe_router:router=eplb,experts=4,top_k=2,ratio=0.35, duo:ratio=0.15]
 * (the two ratios count different things, entries and heads, as PiKVpress's
 * comparison does; what the composition really removes is what the cache
 * reports). Decode attention over the result is balanced across workers by
 * EPLB when the session runs with workers (pikv_session_set_workers). */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"

#include <stdio.h>

/* Add one numeric parameter to a spec built in code. */
static int add_number(pk_spec *s, const char *key, double value)
{
    char text[32];
    snprintf(text, sizeof text, "%.6g", value);
    return pk_spec_add(s, key, text);
}

int pk_build_eplb_duo(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "eplb_share", "experts", "top_k", "pattern", NULL};
    double ratio, share;
    int experts, top_k;
    *out = NULL;
    if (spec->n_children) return pk_fail("press 'eplb_duo' takes no inner press");
    if (pk_spec_check_keys(spec, keys) || pk_press_ratio_param(spec, 0.5, &ratio) ||
        pk_spec_double(spec, "eplb_share", 0.7, 0.0, 1.0, &share) ||
        pk_spec_int(spec, "experts", 4, 1, 256, &experts) || pk_spec_int(spec, "top_k", 2, 1, 256, &top_k))
        return -1;
    const char *pattern = pk_spec_get(spec, "pattern");
    pk_spec router, duo;
    pk_spec_init(&router, "moe_router");
    pk_spec_init(&duo, "duo");
    pk_press *parts[2] = {NULL, NULL};
    if (pk_spec_add(&router, "router", "eplb") || add_number(&router, "experts", experts) ||
        add_number(&router, "top_k", top_k) || add_number(&router, "ratio", ratio * share) ||
        add_number(&duo, "ratio", ratio * (1.0 - share)) || (pattern && pk_spec_add(&duo, "pattern", pattern)) ||
        pk_build_moe_router(&router, env, &parts[0]) || pk_build_duo(&duo, env, &parts[1]) ||
        pk_press_compose("eplb_duo", parts, 2, out)) {
        pk_press_destroy(parts[0]);
        pk_press_destroy(parts[1]);
        return pk_fail_prefix("press 'eplb_duo'");
    }
    return 0;
}
