/* pikv duo-calibrate: score every head of a model for DuoAttention and write
 * the pattern (DuoAttention's file format) that the `duo` press reads. */
#include "cli/args.h"
#include "cli/commands.h"
#include "pikv.h"
#include "eval/duo_calibrate.h"

#include <limits.h>
#include <stdio.h>

int cmd_duo_calibrate(int argc, char **argv)
{
    const char *model_flag = NULL, *out_dir = NULL, *haystack = NULL;
    int samples = 16, min_tokens = 1000, max_tokens = 2000, sink = 64, recent = 256, seed = 1000, threads = 0;
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        {"--out", "-o", OPT_STRING, &out_dir, "pattern directory to write (default: MODEL/duo)", NULL},
        {"--samples", NULL, OPT_INT, &(cli_int){&samples, 1, CLI_MAX_TASKS},
         "needle tasks to calibrate on (default 16)", NULL},
        {"--min-tokens", NULL, OPT_INT, &(cli_int){&min_tokens, 1, CLI_MAX_TOKENS},
         "shortest context (default 1000)", NULL},
        {"--max-tokens", NULL, OPT_INT, &(cli_int){&max_tokens, 1, CLI_MAX_TOKENS},
         "longest context (default 2000)", NULL},
        {"--sink", NULL, OPT_INT, &(cli_int){&sink, 0, CLI_MAX_TOKENS},
         "attention sinks of a streaming head (default 64)", NULL},
        {"--recent", NULL, OPT_INT, &(cli_int){&recent, 1, CLI_MAX_TOKENS},
         "recent window of a streaming head (default 256)", NULL},
        {"--haystack", NULL, OPT_STRING, &haystack, "text to hide needles in (default: the bundled data/haystack.txt)", NULL},
        {"--seed", NULL, OPT_INT, &(cli_int){&seed, INT_MIN, INT_MAX},
         "task seed (default 1000, apart from pikv eval's)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)", NULL},
    };
    const cli_command cmd = {
        "duo-calibrate", "duo-calibrate [--model DIR] [--out DIR] [--samples N] [--sink S --recent R]",
        "Scores every attention head by how far the final hidden states at the answer positions of\n"
        "needle tasks move when that head alone sees only sink + recent tokens, and writes the scores\n"
        "(1 = most retrieval-like) as full_attention_heads.tsv + config.json, DuoAttention's format.",
        opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (min_tokens <= sink + recent || max_tokens < min_tokens)
        return cli_error(&cmd, "--min-tokens/--max-tokens: need sink + recent < min <= max, got %d..%d", min_tokens,
                         max_tokens), 2;
    const char *dir = cli_model_dir(model_flag);
    char default_out[1100];
    if (!out_dir) {
        snprintf(default_out, sizeof default_out, "%s/duo", dir);
        out_dir = default_out;
    }
    if (cli_check_output(&cmd, "--out", out_dir, 1)) return 1;
    pikv_model *m;
    pikv_tokenizer *tok;
    if (cli_load(&cmd, dir, NULL, &m, &tok)) return 1;
    pk_haystack h = {0};
    pk_duo_pattern pattern = {0};
    pikv_session *s = NULL;
    rc = 1;
    if (max_tokens + 48 > pikv_model_config(m)->n_positions)
        cli_error(&cmd, "--max-tokens: %d + question exceeds the model's %d positions", max_tokens,
                  pikv_model_config(m)->n_positions);
    else if (pk_haystack_load(&h, tok, cli_haystack_path(haystack)))
        cli_error(&cmd, "--haystack: %s", pikv_last_error());
    else if (!(s = pikv_session_new(m, cli_threads(threads))))
        cli_fail(&cmd);
    else {
        pk_duo_calibration c = {samples, min_tokens, max_tokens, sink, recent, (uint64_t)seed};
        double t0 = pikv_now();
        if (pk_duo_calibrate(s, &h, &c, cli_progress, "duo-calibrate: sample", &pattern) || pk_duo_pattern_save(out_dir, &pattern))
            cli_error(&cmd, "%s", pikv_last_error());
        else {
            fprintf(stderr, "duo-calibrate: %d heads scored on %d samples in %.1f s; pattern written to %s\n",
                    pattern.n_layer * pattern.n_head, samples, pikv_now() - t0, out_dir);
            rc = 0;
        }
    }
    pk_duo_pattern_free(&pattern);
    pikv_session_free(s);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    return rc;
}
