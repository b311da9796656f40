/* libFuzzer target: press specs, from text to a built press.
 *
 * The input is a spec string (cut at its first NUL, as a C string would be).
 * When pk_spec_parse accepts it, pk_spec_format must write it, and parsing the
 * canonical text must give back an equal tree whose canonical text is the same
 * (the round trip spec.h promises). Then pikv_press_new builds the press
 * against the bundled model, which must either succeed with a ratio in [0, 1)
 * or fail with a one-line message: the validation path of every builder. */
#include "fuzz.h"
#include "press/spec.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { FORMAT_CAP = 2 * PK_SPEC_MAX_LEN + 64 };

static pikv_model *model;

/* Load the bundled model once for the whole run. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    model = pikv_model_load(fuzz_model_dir());
    if (!model) {
        fprintf(stderr, "fuzz_press_spec: %s\n", pikv_last_error());
        exit(1);
    }
    return 0;
}

/* Same names, parameters (keys and values, in order) and children. */
static int same_tree(const pk_spec *a, const pk_spec *b)
{
    if (strcmp(a->name, b->name) != 0 || a->n_params != b->n_params || a->n_children != b->n_children)
        return 0;
    for (int i = 0; i < a->n_params; i++)
        if (strcmp(a->params[i].key, b->params[i].key) != 0 || strcmp(a->params[i].value, b->params[i].value) != 0)
            return 0;
    for (int i = 0; i < a->n_children; i++)
        if (!same_tree(a->children[i], b->children[i])) return 0;
    return 1;
}

/* Format a parsed tree, parse the canonical text again and compare. */
static void check_round_trip(const pk_spec *spec)
{
    static char canonical[FORMAT_CAP], again[FORMAT_CAP];
    int n = pk_spec_format(spec, canonical, sizeof canonical);
    FUZZ_ASSERT(n >= 0 && (size_t)n == strlen(canonical), "format failed: %s", pikv_last_error());
    pk_spec *reparsed = NULL;
    FUZZ_ASSERT(pk_spec_parse(canonical, &reparsed) == 0, "canonical '%s' does not parse: %s", canonical,
                pikv_last_error());
    FUZZ_ASSERT(same_tree(spec, reparsed), "canonical '%s' parses to another tree", canonical);
    FUZZ_ASSERT(pk_spec_format(reparsed, again, sizeof again) == n && strcmp(canonical, again) == 0,
                "canonical text is not stable: '%s' then '%s'", canonical, again);
    pk_spec_free(reparsed);
}

/* Parse, round-trip and build the spec in the input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    FUZZ_ASSERT(text != NULL, "cannot allocate %zu bytes", size + 1);
    memcpy(text, data, size);
    text[size] = '\0';

    pk_spec *spec = NULL;
    pikv_clear_error();
    if (pk_spec_parse(text, &spec) == 0) {
        check_round_trip(spec);
        pk_spec_free(spec);
    } else {
        FUZZ_ASSERT(spec == NULL, "a failed parse returned a tree");
        fuzz_check_error();
    }

    pikv_clear_error();
    pikv_press *press = pikv_press_new(text, model, fuzz_model_dir());
    if (press) {
        double ratio = pikv_press_ratio(press);
        FUZZ_ASSERT(ratio >= 0 && ratio < 1, "press '%s' has ratio %g", pikv_press_name(press), ratio);
        pikv_press_free(press);
    } else {
        fuzz_check_error();
    }
    free(text);
    return 0;
}
