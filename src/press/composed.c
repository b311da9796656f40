/* composed[a, b, ...]: apply presses in order on the same layer, each on what
 * the previous one kept. Its nominal ratio is 1 - prod(1 - r_i); what it really
 * removed is what the cache reports. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"

static int composed_compress(pk_press *p, const pk_press_view *v)
{
    for (int i = 0; i < p->n_inner; i++)
        if (pk_press_compress(p->inner[i], v)) return -1;
    return 0;
}

static const pk_press_ops composed_ops = {.compress = composed_compress};

int pk_build_composed(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    if (spec->n_params) return pk_fail("press 'composed' takes no parameters; give each inner press its own");
    if (spec->n_children < 1) return pk_fail("press 'composed' needs at least one press: composed[a,b,...]");
    if (pk_press_new("composed", &composed_ops, 0.0, 0, out)) return -1;
    double kept = 1.0;
    for (int i = 0; i < spec->n_children; i++) {
        pk_press *inner;
        if (pk_press_build(spec->children[i], env, &inner)) {
            pk_press_destroy(*out);
            *out = NULL;
            return -1;
        }
        if (inner->ops->after_call || (inner->ops->routing && inner->ops->routing(inner))) {
            pk_fail(inner->ops->after_call
                        ? "press '%s' acts while generating and cannot be composed; wrap the composition instead"
                        : "press '%s' with route=1 cannot be composed: queries are routed through the cache it "
                          "leaves, so it must be the outermost press",
                    inner->name);
            pk_press_destroy(inner);
            pk_press_destroy(*out);
            *out = NULL;
            return -1;
        }
        (*out)->inner[(*out)->n_inner++] = inner;
        kept *= 1.0 - inner->ratio;
    }
    (*out)->ratio = 1.0 - kept;
    return 0;
}
