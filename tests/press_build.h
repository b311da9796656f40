/* For tests that drive presses below the public API (pk_press_compress on
 * hand-made layers): build a press from its spec text. */
#ifndef PIKV_TESTS_PRESS_BUILD_H
#define PIKV_TESTS_PRESS_BUILD_H

#include "check.h"
#include "pikv.h"
#include "press/press.h"
#include "press/spec.h"

/* The press of spec `text` (model may be NULL; pattern files are looked up in
 * the bundled model); NULL, with a failed check, when it does not build. */
static pk_press *press_from(const char *text, const pikv_model *model)
{
    pk_spec *spec = NULL;
    pk_press *press = NULL;
    pk_press_env env = {model, "models/pikv-ref-14m"};
    int rc = pk_spec_parse(text, &spec);
    if (rc == 0) rc = pk_press_build(spec, &env, &press);
    pk_spec_free(spec);
    CHECK(rc == 0 && press, "press '%s' should build: %s", text, pikv_last_error());
    return rc == 0 ? press : NULL;
}

#endif
