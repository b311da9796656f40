/* libFuzzer target: config.json parsing.
 *
 * The input is parsed as JSON by cJSON (as pikv_model_load does), then read by
 * pk_config_parse. A refused config needs a one-line message; an accepted one
 * must describe a model the rest of the library can size without overflow. */
#include "fuzz.h"
#include "model/model.h"

#include <cjson/cJSON.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parse the input and check what pk_config_parse makes of it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    pikv_config cfg;
    pikv_clear_error();
    if (pk_config_parse(root, "config.json", &cfg) != 0) {
        fuzz_check_error();
    } else {
        FUZZ_ASSERT(cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.n_embd >= 1 && cfg.n_positions >= 1 &&
                        cfg.vocab_size >= 1 && cfg.n_inner >= 1,
                    "non-positive size in an accepted config");
        FUZZ_ASSERT(cfg.head_dim * cfg.n_head == cfg.n_embd, "head_dim %d x n_head %d != n_embd %d",
                    cfg.head_dim, cfg.n_head, cfg.n_embd);
        FUZZ_ASSERT(cfg.layer_norm_epsilon > 0 && cfg.layer_norm_epsilon < 1, "epsilon %g",
                    (double)cfg.layer_norm_epsilon);
        FUZZ_ASSERT(cfg.bos_token_id >= -1 && cfg.eos_token_id >= -1, "token ids %d %d", cfg.bos_token_id,
                    cfg.eos_token_id);
    }
    cJSON_Delete(root);
    return 0;
}
