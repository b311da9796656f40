/* composed[a, b, ...]: presses run in order on the same layer, each on what
 * the previous one kept (the engine applies each part's decision before the
 * next part looks). Its nominal ratio is 1 - prod(1 - r_i); what it really
 * removed is what the cache reports. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"

int pk_build_composed(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    *out = NULL;
    if (spec->n_params) return pk_fail("press 'composed' takes no parameters; give each inner press its own");
    if (spec->n_children < 1) return pk_fail("press 'composed' needs at least one press: composed[a,b,...]");
    pk_press *parts[PK_SPEC_MAX_CHILDREN] = {0};
    for (int i = 0; i < spec->n_children; i++)
        if (pk_press_build(spec->children[i], env, &parts[i])) {
            for (int j = 0; j < i; j++) pk_press_destroy(parts[j]);
            return -1;
        }
    return pk_press_compose("composed", parts, spec->n_children, out);
}
