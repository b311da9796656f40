/* pikv eval: retrieval accuracy of presses on seeded needle tasks. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device.h"
#include "eval/retrieval.h"
#include "pikv.h"

#include <limits.h>
#include <stdio.h>

int cmd_eval(int argc, char **argv)
{
    const char *model_flag = NULL, *haystack = NULL, *weights = NULL, *device_flag = NULL;
    cli_list presses = {0};
    int n_tasks = 50, min_tokens = 1000, max_tokens = 2000, query_aware = 0, both = 0, threads = 0, seed = 1;
    cli_kv_flags kv_flags = {0};
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&weights),
        {"--press", NULL, OPT_LIST, &presses, "press to evaluate (repeatable; default: none)", NULL},
        {"--tasks", NULL, OPT_INT, &(cli_int){&n_tasks, 1, CLI_MAX_TASKS}, "number of tasks (default 50)", NULL},
        {"--min-tokens", NULL, OPT_INT, &(cli_int){&min_tokens, 64, CLI_MAX_TOKENS},
         "shortest context (default 1000)", NULL},
        {"--max-tokens", NULL, OPT_INT, &(cli_int){&max_tokens, 64, CLI_MAX_TOKENS},
         "longest context (default 2000)", NULL},
        {"--query-aware", NULL, OPT_FLAG, &query_aware, "the press sees the question when it compresses", NULL},
        {"--both-modes", NULL, OPT_FLAG, &both, "run query-agnostic and query-aware", NULL},
        {"--haystack", NULL, OPT_STRING, &haystack, "text to hide needles in (default: the bundled data/haystack.txt)", NULL},
        {"--seed", NULL, OPT_INT, &(cli_int){&seed, INT_MIN, INT_MAX}, "task seed (default 1)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)", NULL},
        CLI_KV_TYPE_OPTS(kv_flags),
        CLI_DEVICE_OPT(&device_flag),
    };
    const cli_command cmd = {"eval", "eval [--weights T] [--press SPEC]... [--tasks N] [--min-tokens A --max-tokens B]\n"
                             "       [--query-aware | --both-modes] [--kv-type T] [--kv-type-k T] [--kv-type-v T] [--device cpu|cuda]",
                             "Answers N seeded retrieval tasks (a pass key, or 1-4 special magic numbers hidden in\n"
                             "held-out text) with each press and prints the accuracy and the KV cache kept; for a\n"
                             "press that routes queries (moe_router route=1), also the share of the kept cache the\n"
                             "queries read and the attention mass they missed (mean over sampled queries).",
                             opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (max_tokens < min_tokens)
        return cli_error(&cmd, "--min-tokens/--max-tokens: need min <= max, got %d..%d", min_tokens, max_tokens), 2;
    if (presses.n == 0) presses.items[presses.n++] = "none";
    pikv_session_params params;
    if (cli_session_params(&cmd, threads, &kv_flags, &params)) return 2;
    cli_device device;
    const char *load_weights;
    if ((rc = cli_device_session(&cmd, device_flag, weights, &kv_flags, &params, &load_weights, &device))) return rc;

    const char *dir = cli_model_dir(model_flag);
    pikv_model *m;
    pikv_tokenizer *tok;
    if (cli_load(&cmd, dir, load_weights, &m, &tok)) return 1;
    pk_haystack h;
    pikv_session *s = NULL;
    rc = 1;
    if (max_tokens + 48 > pikv_model_config(m)->n_positions) {
        cli_error(&cmd, "--max-tokens: %d + question exceeds the model's %d positions", max_tokens,
                  pikv_model_config(m)->n_positions);
        goto out_model;
    }
    if (pk_haystack_load(&h, tok, cli_haystack_path(haystack))) {
        cli_error(&cmd, "--haystack: %s", pikv_last_error());
        goto out_model;
    }
    if (!(s = pikv_session_new_with_params(m, &params))) { cli_fail(&cmd); goto out; }
    printf("retrieval accuracy, %d tasks of %d-%d tokens (seed %d)\n\n", n_tasks, min_tokens, max_tokens, seed);
    printf("| %-44s | %-14s | %8s | %7s | %7s | %7s | %7s |\n", "press", "mode", "accuracy", "KV kept", "read",
           "missed", "seconds");
    printf("|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------------------------------", "----------------",
           "----------", "---------", "---------", "---------", "---------");
    for (int i = 0; i < presses.n; i++) {
        pikv_press *p = pikv_press_new(presses.items[i], m, dir);
        if (!p) { cli_error(&cmd, "--press: %s", pikv_last_error()); goto out; }
        for (int mode = both ? 0 : query_aware; mode <= (both ? 1 : query_aware); mode++) {
            pk_retrieval_config c = {.n_tasks = n_tasks, .min_tokens = min_tokens, .max_tokens = max_tokens,
                                     .query_aware = mode, .seed = (uint64_t)seed};
            pk_retrieval_result r;
            char label[300];
            snprintf(label, sizeof label, "%s: task", presses.items[i]);
            if (pk_eval_retrieval(s, p, &h, &c, cli_progress, label, &r)) {
                cli_fail(&cmd);
                pikv_press_free(p);
                goto out;
            }
            char read[16] = "-", missed[16] = "-";
            if (r.routed) {
                snprintf(read, sizeof read, "%.1f%%", 100 * r.routing.fraction_read);
                snprintf(missed, sizeof missed, "%.1f%%", 100 * r.routing.mass_missed);
            }
            printf("| %-44s | %-14s | %8.2f | %6.1f%% | %7s | %7s | %7.1f |\n", presses.items[i],
                   mode ? "query-aware" : "query-agnostic", r.accuracy, 100 * r.kv_kept, read, missed, r.seconds);
            fflush(stdout);
        }
        pikv_press_free(p);
    }
    rc = 0;
out:
    pikv_session_free(s);
    pk_haystack_free(&h);
out_model:
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    return rc;
}
