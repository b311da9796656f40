/* libFuzzer target: `pikv eplb`'s JSON front end on arbitrary text.
 *
 * pk_eplb_json parses the problem(s), runs EPLB and prints the plan(s). Any
 * text must either give one line of valid JSON or a one-line error. */
#include "fuzz.h"
#include "router/eplb.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Solve whatever the input describes and check the shape of the answer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pikv_clear_error();
    char *out = pk_eplb_json((const char *)data, size);
    if (!out) {
        fuzz_check_error();
        return 0;
    }
    FUZZ_ASSERT(strchr(out, '\n') == NULL, "output is not one line");
    cJSON *parsed = cJSON_Parse(out);
    FUZZ_ASSERT(parsed != NULL, "output is not JSON: %.200s", out);
    cJSON_Delete(parsed);
    pikv_free(out);
    return 0;
}
