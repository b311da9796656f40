/* pikv inspect: what a checkpoint is and what it costs to hold. */
#include "cli/args.h"
#include "cli/commands.h"
#include "pikv.h"

#include <stdio.h>

int cmd_inspect(int argc, char **argv)
{
    const char *model_flag = NULL, *weights = NULL;
    int check = 0;
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&weights),
        {"--check", NULL, OPT_FLAG, &check, "fail if any weight is NaN or infinite", NULL},
    };
    const cli_command cmd = {"inspect", "inspect [--model DIR] [--weights T] [--check]",
                             "Describes a model: architecture, parameters, stored dtype, bytes on disk and in\n"
                             "memory, context limit, and the KV cache cost per token.",
                             opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    const char *dir = cli_model_dir(model_flag);
    pikv_model *m;
    if (cli_load(&cmd, dir, weights, &m, NULL)) return 1;
    const pikv_config *c = pikv_model_config(m);
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    size_t kv_per_token = (size_t)c->n_layer * (size_t)c->n_head * (2 * (size_t)c->head_dim * 4 + 4);
    printf("model          %s\n", info.dir);
    printf("architecture   %s (gpt2): %d layers, %d heads of %d, d_model %d, MLP %d, vocab %d\n",
           info.architecture, c->n_layer, c->n_head, c->head_dim, c->n_embd, c->n_inner, c->vocab_size);
    printf("parameters     %.2f M (%s)\n", info.n_params / 1e6, info.tied_lm_head ? "LM head tied to wte" : "own LM head");
    printf("stored dtype   %s, %d tensors, %.1f MB on disk\n", info.stored_dtype, info.n_tensors, info.file_bytes / 1e6);
    if (info.weight_type == PIKV_WEIGHTS_F32)
        printf("in memory      float32, %.1f MB\n", info.weight_bytes / 1e6);
    else
        printf("in memory      %s matrices (wpe, norms and biases float32), %.1f MB\n",
               pikv_weight_type_name(info.weight_type), info.weight_bytes / 1e6);
    printf("context limit  %d positions\n", c->n_positions);
    printf("KV cache       %zu bytes per token (K+V float32 + 4-byte position per head), %.1f MB at %d tokens\n",
           kv_per_token, kv_per_token * (double)c->n_positions / 1e6, c->n_positions);
    printf("special ids    bos %d, eos %d\n", c->bos_token_id, c->eos_token_id);
    rc = 0;
    if (info.nonfinite_weights) {
        printf("non-finite     %zu weights (first in '%s')\n", info.nonfinite_weights, info.first_nonfinite_tensor);
        if (check) {
            cli_error(&cmd, "%s: %zu NaN or infinite weights, first in tensor '%s'", dir, info.nonfinite_weights,
                      info.first_nonfinite_tensor);
            rc = 1;
        }
    } else if (check) {
        printf("check          all weights finite\n");
    }
    pikv_model_free(m);
    return rc;
}
