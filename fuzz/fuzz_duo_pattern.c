/* libFuzzer target: DuoAttention's full_attention_heads.tsv parser.
 *
 * pk_duo_pattern_parse reads one row of gate values per layer from arbitrary
 * text. What it accepts must be a non-empty rectangle of gates in [0, 1], and
 * choosing the streaming heads from it at any ratio must stay inside it. */
#include "fuzz.h"
#include "press/duo_pattern.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parse the input as a gate file and select heads at a few ratios. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pk_duo_pattern pattern;
    pikv_clear_error();
    if (pk_duo_pattern_parse((const char *)data, size, "full_attention_heads.tsv", &pattern) != 0) {
        fuzz_check_error();
        FUZZ_ASSERT(pattern.alpha == NULL, "a failed parse kept its gates");
        return 0;
    }
    const int n = pattern.n_layer * pattern.n_head;
    FUZZ_ASSERT(pattern.n_layer > 0 && pattern.n_head > 0, "%d x %d heads", pattern.n_layer, pattern.n_head);
    for (int i = 0; i < n; i++)
        FUZZ_ASSERT(pattern.alpha[i] >= 0 && pattern.alpha[i] <= 1, "gate %d is %g", i, (double)pattern.alpha[i]);
    unsigned char *streaming = malloc((size_t)n);
    FUZZ_ASSERT(streaming != NULL, "cannot allocate %d flags", n);
    const double ratios[] = {0, 0.5, 0.999};
    for (size_t r = 0; r < sizeof ratios / sizeof *ratios; r++) {
        FUZZ_ASSERT(pk_duo_pattern_select(&pattern, ratios[r], streaming) == 0, "select: %s", pikv_last_error());
        int chosen = 0;
        for (int i = 0; i < n; i++) chosen += streaming[i];
        FUZZ_ASSERT(chosen <= n, "%d of %d heads stream", chosen, n);
    }
    free(streaming);
    pk_duo_pattern_free(&pattern);
    return 0;
}
