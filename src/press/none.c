/* none: the baseline. Keeps every entry; exists so that "no compression" is a
 * press like any other in specs, reports and comparisons. */
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"

/* The keep set arrives saying "keep everything"; it stays so. */
static int keep_everything(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    (void)p, (void)v, (void)out;
    return 0;
}

static const pk_press_ops none_ops = {.select = keep_everything};

int pk_build_none(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    (void)env;
    if (spec->n_children || spec->n_params) return pk_fail("press 'none' takes no parameters");
    if (pk_press_new("none", &none_ops, 0.0, 0, out)) return -1;
    (*out)->caps = PK_PRESS_QUERY_FREE | PK_PRESS_ENTRY_FREE | PK_PRESS_MEASURED;
    return 0;
}
