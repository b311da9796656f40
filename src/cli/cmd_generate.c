/* pikv generate: run a prompt and generate, greedy or sampled; or, with a press,
 * a context and questions (kvpress's pipeline): compress the context once,
 * then answer each question greedily against the compressed cache. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device.h"
#include "engine/session.h"
#include "pikv.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *model_flag, *weights, *prompt, *prompt_file, *context_file, *press_spec, *device;
    cli_list questions;
    int max_new, greedy, top_k, seed, threads, workers, print_ids, json, query_aware, sampling_given;
    double temperature, top_p;
    cli_kv_flags kv;
} generate_options;

/* Everything a run holds, released in one place. */
typedef struct {
    pikv_model *model;
    pikv_tokenizer *tok;
    pikv_session *session;
    pikv_press *press;
    char *file_text;
    int32_t *context;
    int n_context;
    int32_t *questions[CLI_LIST_MAX];
    int n_question[CLI_LIST_MAX];
} generate_run;

static void run_free(generate_run *r)
{
    for (int i = 0; i < CLI_LIST_MAX; i++) pikv_free(r->questions[i]);
    pikv_free(r->context);
    pikv_free(r->file_text);
    pikv_press_free(r->press);
    pikv_session_free(r->session);
    pikv_tokenizer_free(r->tok);
    pikv_model_free(r->model);
}

/* Tokenize text given to `source` (a flag or file name), which must not be empty. */
static int tokenize_input(const cli_command *cmd, const pikv_tokenizer *tok, const char *source, const char *text,
                          size_t len, int32_t **ids, int *n)
{
    size_t count = 0;
    if (pikv_tokenize(tok, text, len, ids, &count)) return cli_error(cmd, "%s: %s", source, pikv_last_error());
    if (count == 0) return cli_error(cmd, "%s: the text is empty", source);
    *n = (int)count;
    return 0;
}

/* Print one generated answer as text, as ids, or into a JSON array. */
static int print_answer(const cli_command *cmd, const pikv_tokenizer *tok, const generate_options *o,
                        const char *question, const int32_t *ids, int n, cJSON *answers)
{
    size_t len;
    char *text = pikv_detokenize(tok, ids, (size_t)n, &len);
    if (!text) return cli_fail(cmd);
    if (answers) {
        cJSON *a = cJSON_CreateObject();
        if (question) cJSON_AddStringToObject(a, "question", question);
        cJSON_AddStringToObject(a, "text", text);
        cJSON *arr = cJSON_AddArrayToObject(a, "ids");
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
        cJSON_AddItemToArray(answers, a);
    } else if (o->print_ids) {
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
    } else {
        if (question) printf("Q: %s\nA:", question);
        fwrite(text, 1, len, stdout);
        putchar('\n');
    }
    pikv_free(text);
    return 0;
}

/* What a plain generation prints: the text (or ids), and the timings and KV
 * bytes on stderr, or everything as one JSON object. */
static int report_plain(const cli_command *cmd, const generate_options *o, const generate_run *r, const int32_t *ids,
                        int n_ids, double prefill_s, double decode_s, size_t kv_bytes)
{
    double tok_s = n_ids > 1 && decode_s > 0 ? (n_ids - 1) / decode_s : 0;
    cJSON *json = o->json ? cJSON_CreateObject() : NULL, *answers = json ? cJSON_CreateArray() : NULL;
    int rc = print_answer(cmd, r->tok, o, NULL, ids, n_ids, answers);
    if (json) {
        cJSON *first = cJSON_GetArrayItem(answers, 0);
        cJSON_AddNumberToObject(json, "prompt_tokens", r->n_context);
        if (first) {
            cJSON_AddItemToObject(json, "ids", cJSON_DetachItemFromObject(first, "ids"));
            cJSON_AddItemToObject(json, "text", cJSON_DetachItemFromObject(first, "text"));
        }
        cJSON_AddNumberToObject(json, "prefill_s", prefill_s);
        cJSON_AddNumberToObject(json, "decode_s", decode_s);
        cJSON_AddNumberToObject(json, "decode_tok_s", tok_s);
        cJSON_AddNumberToObject(json, "kv_bytes", (double)kv_bytes);
        cJSON_Delete(answers);
        char *text = cJSON_PrintUnformatted(json);
        if (text) puts(text);
        cJSON_free(text);
        cJSON_Delete(json);
    } else {
        fprintf(stderr, "prefill: %d tokens in %.3f s; decode: %d tokens in %.3f s (%.1f tok/s); KV cache %.2f MiB\n",
                r->n_context, prefill_s, n_ids > 0 ? n_ids - 1 : 0, decode_s, tok_s, kv_bytes / 1048576.0);
    }
    return rc;
}

/* Plain generation: the prompt, then sampled or greedy tokens. */
static int run_plain(const cli_command *cmd, const generate_options *o, generate_run *r)
{
    const pikv_config *cfg = pikv_model_config(r->model);
    pikv_sampling sampling = {.greedy = !o->sampling_given, .temperature = (float)o->temperature,
                              .top_k = o->top_k, .top_p = (float)o->top_p, .seed = (uint64_t)o->seed};
    pikv_generation gen;
    if (pikv_generate(r->session, r->context, r->n_context, o->max_new, &sampling, cfg->eos_token_id, &gen))
        return cli_error(cmd, "%s: %s", o->prompt ? "--prompt" : o->prompt_file, pikv_last_error());
    int rc = report_plain(cmd, o, r, gen.ids, gen.n_ids, gen.prefill_s, gen.decode_s, pikv_session_kv_bytes(r->session));
    pikv_free(gen.ids);
    return rc;
}

/* For a press that routes queries (moe_router route=1): what the queries read
 * of the kept cache and the attention mass they missed, into the JSON object
 * or as a line on stderr. */
static void report_routing(pikv_press *press, cJSON *json)
{
    pikv_routing_stats st;
    if (!press || !pikv_press_routes_queries(press) || pikv_press_routing_stats(press, &st, 0)) return;
    if (json) {
        cJSON *r = cJSON_AddObjectToObject(json, "routing");
        cJSON_AddNumberToObject(r, "queries", (double)st.queries);
        cJSON_AddNumberToObject(r, "fraction_read", st.fraction_read);
        cJSON_AddNumberToObject(r, "sampled", (double)st.sampled);
        cJSON_AddNumberToObject(r, "mass_missed", st.mass_missed);
        cJSON_AddNumberToObject(r, "mass_missed_max", st.mass_missed_max);
        return;
    }
    fprintf(stderr,
            "routing: queries read %.1f%% of the visible cache (%ld query-head reads); full attention puts %.2f%% "
            "of its mass (max %.2f%%) on the entries they skipped (%ld sampled)\n",
            100 * st.fraction_read, st.queries, 100 * st.mass_missed, 100 * st.mass_missed_max, st.sampled);
}

/* The pipeline: a context compressed by the press, then the questions. */
static int run_pipeline(const cli_command *cmd, const generate_options *o, generate_run *r)
{
    const pikv_config *cfg = pikv_model_config(r->model);
    pikv_qa_request rq = {.context = r->context, .n_context = r->n_context,
                          .questions = (const int32_t *const *)r->questions, .n_question = r->n_question,
                          .n_questions = o->questions.n, .max_new_tokens = o->max_new,
                          .stop_id = cfg->eos_token_id, .query_aware = o->query_aware};
    pikv_qa_result res;
    if (pikv_answer(r->session, r->press, &rq, &res)) return cli_fail(cmd);
    const char *mode = o->query_aware ? "query-aware" : "query-agnostic";
    const char *press = o->press_spec ? o->press_spec : "none";
    double tok_s = res.decode_s > 0 ? res.decode_tokens / res.decode_s : 0;
    cJSON *json = o->json ? cJSON_CreateObject() : NULL, *answers = json ? cJSON_CreateArray() : NULL;
    int rc = 0;
    for (int i = 0; i < res.n_answers && rc == 0; i++)
        rc = print_answer(cmd, r->tok, o, o->questions.n ? o->questions.items[i] : NULL, res.answers[i],
                          res.n_answer[i], answers);
    if (json) {
        cJSON_AddStringToObject(json, "press", press);
        cJSON_AddStringToObject(json, "mode", mode);
        cJSON_AddNumberToObject(json, "prompt_tokens", r->n_context);
        cJSON *first = cJSON_GetArrayItem(answers, 0);
        if (first) {
            cJSON_AddItemReferenceToObject(json, "ids", cJSON_GetObjectItem(first, "ids"));
            cJSON_AddItemReferenceToObject(json, "text", cJSON_GetObjectItem(first, "text"));
        }
        cJSON_AddNumberToObject(json, "prefill_s", res.prefill_s);
        cJSON_AddNumberToObject(json, "compression_s", res.compression_s);
        cJSON_AddNumberToObject(json, "decode_s", res.decode_s);
        cJSON_AddNumberToObject(json, "decode_tok_s", tok_s);
        cJSON_AddNumberToObject(json, "kv_bytes_before", (double)res.kv_bytes_before);
        cJSON_AddNumberToObject(json, "kv_bytes_after", (double)res.kv_bytes_after);
        cJSON_AddNumberToObject(json, "kv_bytes", (double)res.kv_bytes_after);
        cJSON_AddItemToObject(json, "answers", answers);
        report_routing(r->press, json);
        char *s = cJSON_PrintUnformatted(json);
        if (s) puts(s);
        cJSON_free(s);
        cJSON_Delete(json);
    } else {
        double kept = res.kv_bytes_before ? (double)res.kv_bytes_after / (double)res.kv_bytes_before : 1;
        fprintf(stderr,
                "press %s (%s): KV cache %.2f -> %.2f MiB (%.1f%% kept); prefill %.3f s, compression %.3f s, "
                "decode %d tokens in %.3f s (%.1f tok/s)\n",
                press, mode, res.kv_bytes_before / 1048576.0, res.kv_bytes_after / 1048576.0, 100 * kept,
                res.prefill_s, res.compression_s, res.decode_tokens, res.decode_s, tok_s);
        report_routing(r->press, NULL);
        if (*pk_session_press_note(r->session)) fprintf(stderr, "press %s: %s\n", press, pk_session_press_note(r->session));
    }
    pikv_qa_result_free(&res);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    generate_options o = {.max_new = 32, .temperature = 1.0, .top_p = 1.0};
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &o.model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&o.weights),
        {"--prompt", "-p", OPT_STRING, &o.prompt, "prompt text", NULL},
        {"--prompt-file", "-f", OPT_STRING, &o.prompt_file, "read the prompt from a file", NULL},
        {"--context-file", NULL, OPT_STRING, &o.context_file, "a context to compress and ask questions about",
         NULL},
        {"--question", "-q", OPT_LIST, &o.questions, "a question about the context (repeatable)", NULL},
        {"--press", NULL, OPT_STRING, &o.press_spec, "compress the KV cache, e.g. snapkv:0.5 (see README)", NULL},
        {"--query-aware", NULL, OPT_FLAG, &o.query_aware, "let the press see each question when it compresses",
         NULL},
        {"--max-new-tokens", "-n", OPT_INT, &(cli_int){&o.max_new, 0, CLI_MAX_TOKENS},
         "tokens to generate (default 32)", NULL},
        {"--greedy", NULL, OPT_FLAG, &o.greedy, "pick the most likely token (the default)", NULL},
        {"--temperature", NULL, OPT_FLOAT, &o.temperature, "sample at this temperature (> 0)", &o.sampling_given},
        {"--top-k", NULL, OPT_INT, &(cli_int){&o.top_k, 0, CLI_MAX_TOKENS},
         "sample among the k most likely tokens (0 = all)", &o.sampling_given},
        {"--top-p", NULL, OPT_FLOAT, &o.top_p, "sample from the smallest set with this mass (0 < p <= 1)",
         &o.sampling_given},
        {"--seed", NULL, OPT_INT, &(cli_int){&o.seed, INT_MIN, INT_MAX},
         "random seed for sampling (default 0)", &o.sampling_given},
        {"--threads", "-t", OPT_INT, &(cli_int){&o.threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)", NULL},
        CLI_KV_TYPE_OPTS(o.kv),
        {"--workers", "-w", OPT_INT, &(cli_int){&o.workers, 0, 64},
         "decode attention on W workers, heads placed by EPLB", NULL},
        {"--print-ids", NULL, OPT_FLAG, &o.print_ids, "print the generated token ids on one line", NULL},
        {"--json", NULL, OPT_FLAG, &o.json, "print one JSON object with ids, text, timings and bytes", NULL},
        CLI_DEVICE_OPT(&o.device),
    };
    const cli_command cmd = {
        "generate",
        "generate [--model DIR] [--weights T] (--prompt TEXT | --prompt-file F | --context-file F) [--max-new-tokens N]\n"
        "       [--greedy | --temperature T --top-k K --top-p P --seed S]\n"
        "       [--press SPEC] [--question Q]... [--query-aware] [--threads N] [--workers W] [--print-ids]\n"
        "       [--kv-type T] [--kv-type-k T] [--kv-type-v T] [--json] [--device cpu|cuda]",
        "Prefills the prompt, then generates up to N tokens (stopping at end-of-text).\n"
        "With --press or --question, the prompt is a context: it is compressed once by the press and each\n"
        "question is answered greedily against the compressed cache (the cache is rewound between\n"
        "questions). --query-aware compresses context + question together, once per question.\n"
        "Prints the generated text; timings and KV bytes go to stderr. --device cuda runs it on the GPU,\n"
        "each press applied there (a line on stderr says how it decided: from positions, scored on the\n"
        "GPU, or on the host from a copy); workers and --kv-type stay on the CPU.",
        opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    const int pipeline = o.press_spec || o.questions.n || o.context_file || o.query_aware;
    if ((o.prompt != NULL) + (o.prompt_file != NULL) + (o.context_file != NULL) != 1)
        return cli_error(&cmd, "give exactly one of --prompt, --prompt-file and --context-file"), 2;
    if (o.greedy && o.sampling_given)
        return cli_error(&cmd, "--greedy cannot be combined with --temperature/--top-k/--top-p/--seed"), 2;
    if (pipeline && o.sampling_given)
        return cli_error(&cmd, "--press/--question answer greedily: drop --temperature/--top-k/--top-p/--seed"), 2;
    if (o.query_aware && o.questions.n == 0) return cli_error(&cmd, "--query-aware needs at least one --question"), 2;
    if (!(o.temperature > 0)) return cli_error(&cmd, "--temperature: must be > 0, got %g", o.temperature), 2;
    if (!(o.top_p > 0 && o.top_p <= 1)) return cli_error(&cmd, "--top-p: must be in (0, 1], got %g", o.top_p), 2;
    pikv_session_params params;
    if (cli_session_params(&cmd, o.threads, &o.kv, &params)) return 2;
    cli_device device;
    const char *load_weights;
    if ((rc = cli_device_session(&cmd, o.device, o.weights, &o.kv, &params, &load_weights, &device))) return rc;
    if (device == CLI_DEVICE_CUDA && o.workers > 1)
        return cli_error(&cmd, "--workers: decode attention on placed workers is not on the GPU"), 2;

    generate_run r = {0};
    rc = 1;
    const char *source = o.prompt ? "--prompt" : o.prompt_file ? o.prompt_file : o.context_file;
    const char *text = o.prompt;
    size_t len = o.prompt ? strlen(o.prompt) : 0;
    if (!o.prompt) {
        const char *flag = o.prompt_file ? "--prompt-file" : "--context-file";
        if (!(r.file_text = cli_read_text(&cmd, flag, source, &len))) goto done;
        text = r.file_text;
    }
    const char *dir = cli_model_dir(o.model_flag);
    if (cli_load(&cmd, dir, load_weights, &r.model, &r.tok) ||
        tokenize_input(&cmd, r.tok, source, text, len, &r.context, &r.n_context))
        goto done;
    if (o.press_spec && !(r.press = pikv_press_new(o.press_spec, r.model, dir))) {
        cli_error(&cmd, "--press: %s", pikv_last_error());
        goto done;
    }
    for (int i = 0; i < o.questions.n; i++)
        if (tokenize_input(&cmd, r.tok, "--question", o.questions.items[i], strlen(o.questions.items[i]),
                           &r.questions[i], &r.n_question[i]))
            goto done;
    if (!(r.session = pikv_session_new_with_params(r.model, &params)) ||
        pikv_session_set_workers(r.session, o.workers, 1)) {
        cli_fail(&cmd);
        goto done;
    }
    rc = pipeline ? run_pipeline(&cmd, &o, &r) : run_plain(&cmd, &o, &r);
done:
    run_free(&r);
    return rc;
}
