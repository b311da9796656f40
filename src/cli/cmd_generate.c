/* pikv generate: prefill a prompt and generate, greedy or sampled. */
#include "cli/args.h"
#include "cli/commands.h"
#include "pikv.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

int cmd_generate(int argc, char **argv)
{
    const char *model_flag = NULL, *prompt = NULL, *prompt_file = NULL;
    int max_new = 32, greedy = 0, top_k = 0, seed = 0, threads = 0, print_ids = 0, json = 0;
    double temperature = 1.0, top_p = 1.0;
    int sampling_given = 0;
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        {"--prompt", "-p", OPT_STRING, &prompt, "prompt text", NULL},
        {"--prompt-file", "-f", OPT_STRING, &prompt_file, "read the prompt from a file", NULL},
        {"--max-new-tokens", "-n", OPT_INT, &max_new, "tokens to generate (default 32)", NULL},
        {"--greedy", NULL, OPT_FLAG, &greedy, "pick the most likely token (the default)", NULL},
        {"--temperature", NULL, OPT_FLOAT, &temperature, "sample at this temperature (> 0)", &sampling_given},
        {"--top-k", NULL, OPT_INT, &top_k, "sample among the k most likely tokens (0 = all)", &sampling_given},
        {"--top-p", NULL, OPT_FLOAT, &top_p, "sample from the smallest set with this mass (0 < p <= 1)",
         &sampling_given},
        {"--seed", NULL, OPT_INT, &seed, "random seed for sampling (default 0)", &sampling_given},
        {"--threads", "-t", OPT_INT, &threads, "threads (default: all cores)", NULL},
        {"--print-ids", NULL, OPT_FLAG, &print_ids, "print the generated token ids on one line", NULL},
        {"--json", NULL, OPT_FLAG, &json, "print one JSON object with ids, text and timings", NULL},
    };
    const cli_command cmd = {"generate",
                             "generate [--model DIR] (--prompt TEXT | --prompt-file F) [--max-new-tokens N]\n"
                             "       [--greedy | --temperature T --top-k K --top-p P --seed S] [--threads N]\n"
                             "       [--print-ids] [--json]",
                             "Prefills the prompt, then generates up to N tokens (stopping at end-of-text).\n"
                             "Prints the generated text; timings go to stderr.",
                             opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!prompt == !prompt_file) return cli_error(&cmd, "give exactly one of --prompt and --prompt-file"), 2;
    if (greedy && sampling_given)
        return cli_error(&cmd, "--greedy cannot be combined with --temperature/--top-k/--top-p/--seed"), 2;
    if (max_new < 0) return cli_error(&cmd, "--max-new-tokens: must be >= 0, got %d", max_new), 2;
    if (!(temperature > 0)) return cli_error(&cmd, "--temperature: must be > 0, got %g", temperature), 2;
    if (top_k < 0) return cli_error(&cmd, "--top-k: must be >= 0, got %d", top_k), 2;
    if (!(top_p > 0 && top_p <= 1)) return cli_error(&cmd, "--top-p: must be in (0, 1], got %g", top_p), 2;
    if (threads < 0) return cli_error(&cmd, "--threads: must be >= 1, got %d", threads), 2;

    size_t text_len = prompt ? strlen(prompt) : 0;
    char *file_text = NULL;
    if (prompt_file && !(file_text = cli_read_text(&cmd, "--prompt-file", prompt_file, &text_len))) return 1;
    const char *text = prompt ? prompt : file_text;

    pikv_model *model = NULL;
    pikv_tokenizer *tok = NULL;
    pikv_session *session = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    pikv_generation gen = {0};
    char *out_text = NULL;
    rc = 1;
    if (cli_load(&cmd, cli_model_dir(model_flag), &model, &tok)) goto done;
    if (pikv_tokenize(tok, text, text_len, &ids, &n_ids)) {
        cli_error(&cmd, "%s: %s", prompt ? "--prompt" : prompt_file, pikv_last_error());
        goto done;
    }
    if (n_ids == 0) {
        cli_error(&cmd, "%s: the prompt is empty", prompt ? "--prompt" : prompt_file);
        goto done;
    }
    const pikv_config *cfg = pikv_model_config(model);
    if (!(session = pikv_session_new(model, threads))) { cli_fail(&cmd); goto done; }
    pikv_sampling sampling = {.greedy = !sampling_given, .temperature = (float)temperature, .top_k = top_k,
                              .top_p = (float)top_p, .seed = (uint64_t)seed};
    if (pikv_generate(session, ids, (int)n_ids, max_new, &sampling, cfg->eos_token_id, &gen)) {
        cli_error(&cmd, "%s: %s", prompt ? "--prompt" : prompt_file, pikv_last_error());
        goto done;
    }
    size_t out_len = 0;
    if (!(out_text = pikv_detokenize(tok, gen.ids, (size_t)gen.n_ids, &out_len))) { cli_fail(&cmd); goto done; }
    double decode_tok_s = gen.n_ids > 1 && gen.decode_s > 0 ? (gen.n_ids - 1) / gen.decode_s : 0;
    size_t kv_bytes = pikv_session_kv_bytes(session);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_ids);
        cJSON *arr = cJSON_AddArrayToObject(o, "ids");
        for (int i = 0; i < gen.n_ids; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(gen.ids[i]));
        cJSON_AddStringToObject(o, "text", out_text);
        cJSON_AddNumberToObject(o, "prefill_s", gen.prefill_s);
        cJSON_AddNumberToObject(o, "decode_s", gen.decode_s);
        cJSON_AddNumberToObject(o, "decode_tok_s", decode_tok_s);
        cJSON_AddNumberToObject(o, "kv_bytes", (double)kv_bytes);
        char *s = cJSON_PrintUnformatted(o);
        if (s) puts(s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else if (print_ids) {
        for (int i = 0; i < gen.n_ids; i++) printf("%s%d", i ? " " : "", gen.ids[i]);
        putchar('\n');
    } else {
        fwrite(out_text, 1, out_len, stdout);
        putchar('\n');
    }
    if (!json)
        fprintf(stderr, "prefill: %zu tokens in %.3f s (%.0f tok/s); decode: %d tokens in %.3f s (%.1f tok/s); "
                        "KV cache %.2f MiB\n",
                n_ids, gen.prefill_s, n_ids / (gen.prefill_s > 0 ? gen.prefill_s : 1e-9), gen.n_ids > 0 ? gen.n_ids - 1 : 0,
                gen.decode_s, decode_tok_s, kv_bytes / 1048576.0);
    rc = 0;
done:
    pikv_free(out_text);
    pikv_free(gen.ids);
    pikv_free(ids);
    pikv_session_free(session);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    pikv_free(file_text);
    return rc;
}
