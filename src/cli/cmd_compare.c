/* pikv compare: the experiment of PiKVpress's comparison -- No Compression,
 * Duo Attention and EPLB + Duo Attention (or any presses) on one context --
 * measured in one run: KV memory, prefill / compression / decode time, speed, quality
 * against no compression; the relative improvements and a recommendation.
 * --detailed adds sweeps over the ratio, the number of experts, the context
 * length and the KV cache's type, written as JSON, CSV and SVG plots with --out. */
#include "bench/compare.h"
#include "bench/report.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device.h"
#include "pikv.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_REPS = 100, QUICK_TASKS = 10, DETAILED_TASKS = 50 };

typedef struct {
    const char *model_flag, *weights, *context_file, *question, *methods, *scenario, *csv, *out, *haystack, *kv_budget;
    double ratio, eplb_share;
    int experts, top_k, context_tokens, max_new, reps, threads, tasks, seed, query_aware, json, detailed;
    int ratio_seen, experts_seen, context_seen, tasks_seen;
    cli_kv_flags kv;
} compare_options;

/* Everything a run holds, released in one place. */
typedef struct {
    pikv_model *model;
    pikv_tokenizer *tok;
    pikv_session *session;
    pk_haystack haystack;
    pk_task task;
    char *file_text, *question_text;
    int32_t *context, *question; /* from --context-file and --question */
    int n_context, n_question;
    pk_compare_report report;
} compare_run;

/* Release everything a run holds; safe on a partly built run. */
static void run_free(compare_run *r)
{
    pk_compare_report_free(&r->report);
    pikv_free(r->question);
    pikv_free(r->context);
    pikv_free(r->question_text);
    pikv_free(r->file_text);
    pk_task_free(&r->task);
    pk_haystack_free(&r->haystack);
    pikv_session_free(r->session);
    pikv_tokenizer_free(r->tok);
    pikv_model_free(r->model);
}

/* Check the numeric options; prints the error and returns 2 when one is out of range. */
static int check_options(const cli_command *cmd, const compare_options *o)
{
    if (!(o->ratio >= 0 && o->ratio < 1)) return cli_error(cmd, "--ratio: must be in [0, 1), got %g", o->ratio), 2;
    if (o->top_k < 1 || o->top_k > o->experts)
        return cli_error(cmd, "--top-k: must be in 1..%d (the number of experts), got %d", o->experts, o->top_k), 2;
    if (!(o->eplb_share >= 0 && o->eplb_share <= 1))
        return cli_error(cmd, "--eplb-share: must be in [0, 1], got %g", o->eplb_share), 2;
    if (o->context_file && o->context_seen)
        return cli_error(cmd, "give --context-file or --context-tokens, not both"), 2;
    if (o->context_file && !o->question) return cli_error(cmd, "--context-file needs a --question"), 2;
    return 0;
}

/* Tokenize text given to `flag`, which must not be empty. */
static int tokenize_flag(const cli_command *cmd, const pikv_tokenizer *tok, const char *flag, const char *text,
                         size_t len, int32_t **ids, int *n)
{
    size_t count = 0;
    if (pikv_tokenize(tok, text, len, ids, &count)) return cli_error(cmd, "%s: %s", flag, pikv_last_error());
    if (count == 0) return cli_error(cmd, "%s: the text is empty", flag);
    *n = (int)count;
    return 0;
}

/* The inputs: the context file with the question, or a needle task of
 * --context-tokens tokens (capped with a notice when a scenario asks for more
 * than the model holds) with its question or --question. Returns 0, or the
 * exit status after printing the error. */
static int make_inputs(const cli_command *cmd, const compare_options *o, compare_run *r, pk_compare_config *c)
{
    const int n_positions = pikv_model_config(r->model)->n_positions;
    if (o->question && tokenize_flag(cmd, r->tok, "--question", o->question, strlen(o->question), &r->question,
                                     &r->n_question))
        return 1;
    if (o->context_file) {
        size_t len;
        if (!(r->file_text = cli_read_text(cmd, "--context-file", o->context_file, &len)) ||
            tokenize_flag(cmd, r->tok, o->context_file, r->file_text, len, &r->context, &r->n_context))
            return 1;
        if (r->n_context + r->n_question + o->max_new > n_positions)
            return cli_error(cmd, "--context-file: %d tokens + %d question + %d answer tokens exceed the model's %d "
                                  "positions",
                             r->n_context, r->n_question, o->max_new, n_positions);
        *c = (pk_compare_config){.context = r->context, .n_context = r->n_context, .question = r->question,
                                 .n_question = r->n_question, .question_text = o->question,
                                 .context_source = o->context_file};
        return 0;
    }
    /* The detailed run's main context defaults to the longest that fits, the
     * top of its context sweep, so that those inputs are measured once. */
    const int longest = o->detailed && !o->context_seen && !o->scenario;
    int tokens = longest ? n_positions : o->context_tokens;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (pk_compare_needle_task(&r->haystack, tokens, (uint64_t)o->seed, &r->task))
            return cli_error(cmd, "--context-tokens: %s", pikv_last_error());
        const int room = (o->question ? r->n_question : r->task.n_question) + o->max_new;
        const int fits = pk_context_cap(tokens, n_positions, room);
        if (fits == tokens) break;
        pk_task_free(&r->task);
        if (!longest && (o->context_seen || !o->scenario))
            return cli_error(cmd, "--context-tokens: %d + %d question and answer tokens exceed the model's %d "
                                  "positions (at most %d)",
                             tokens, room, n_positions, fits), 2;
        if (fits < 64) return cli_error(cmd, "--max-new-tokens: %d leaves no room for a context", o->max_new), 2;
        if (!longest)
            fprintf(stderr, "pikv %s: notice: scenario %s asks for %d context tokens; capped at %d (the model's %d "
                            "positions less %d for the question and answer)\n",
                    cmd->name, o->scenario, tokens, fits, n_positions, room);
        tokens = fits;
    }
    const int own_question = o->question == NULL;
    if (own_question &&
        !(r->question_text = pikv_detokenize(r->tok, r->task.question, (size_t)r->task.n_question, NULL)))
        return cli_fail(cmd);
    *c = (pk_compare_config){.context = r->task.context, .n_context = r->task.n_context,
                             .question = own_question ? r->task.question : r->question,
                             .n_question = own_question ? r->task.n_question : r->n_question,
                             .question_text = own_question ? r->question_text : o->question,
                             .context_source = "a needle task: a pass key at half depth in the haystack text",
                             .task = own_question ? &r->task : NULL};
    return 0;
}

/* The status line on stderr: each line overwrites the last; NULL ends it. */
typedef struct {
    const char *command;
    int shown;
} status_line;

/* Overwrite the status line on stderr; NULL ends it with a newline. */
static void show_status(const char *line, void *ctx)
{
    status_line *s = ctx;
    if (!line) {
        if (s->shown) fputc('\n', stderr);
        s->shown = 0;
        return;
    }
    fprintf(stderr, "\r%s: %-110.110s", s->command, line);
    s->shown = 1;
}

/* Tell the user where a file went. */
static void show_written(const char *path, void *ctx)
{
    fprintf(stderr, "pikv %s: wrote %s\n", (const char *)ctx, path);
}

/* The files of a report set as they are written into the staging directory. */
typedef struct {
    const char *names[64];
    char *owned[64];
    int slots[64];
    int n;
} staged_files;

/* pk_report_write_dir's callback: remember the file's name, and remove it if
 * a signal comes before it is published. */
static void stage_file(const char *path, void *ctx)
{
    staged_files *st = ctx;
    if (st->n == 64) return;
    const char *slash = strrchr(path, '/');
    st->owned[st->n] = pk_strdup(slash ? slash + 1 : path, "report file name");
    if (!st->owned[st->n]) return;
    st->names[st->n] = st->owned[st->n];
    st->slots[st->n] = pk_cleanup_register(path, 0);
    st->n++;
}

/* Write the report set into dir as a unit: every file into a staging directory
 * inside dir first, then all moved in by pk_publish_dir. A failure before the
 * move leaves the old set untouched; the staging directory goes either way,
 * and a signal removes it too (its name, .compare-XXXXXX, says what it was). */
static int write_report_set(const cli_command *cmd, const char *dir, const pk_compare_report *report)
{
    char staging[4096];
    if (snprintf(staging, sizeof staging, "%s/.compare-XXXXXX", dir) >= (int)sizeof staging)
        return cli_error(cmd, "--out: %s: path too long", dir);
    if (!mkdtemp(staging))
        return cli_error(cmd, "--out: %s: cannot create a staging directory: %s", dir, strerror(errno));
    int dir_slot = pk_cleanup_register(staging, 1);
    staged_files st = {0};
    int rc = pk_report_write_dir(report, staging, stage_file, &st);
    if (rc == 0) rc = pk_publish_dir(staging, dir, st.names, st.n);
    if (rc) cli_error(cmd, "--out: %s", pikv_last_error());
    char path[4096];
    for (int i = 0; i < st.n; i++) {
        if (rc == 0 && pk_join_path(path, sizeof path, dir, st.names[i]) == 0) show_written(path, (void *)cmd->name);
        if (rc != 0 && pk_join_path(path, sizeof path, staging, st.names[i]) == 0) unlink(path);
        pk_cleanup_unregister(st.slots[i]);
        pk_free(st.owned[i]);
    }
    rmdir(staging);
    pk_cleanup_unregister(dir_slot);
    return rc ? 1 : 0;
}

/* Print the report (text or JSON) and write the requested files. */
static int emit(const cli_command *cmd, const compare_options *o, const pk_compare_report *report)
{
    if (o->json) {
        cJSON *json = pk_report_json(report);
        char *text = json ? cJSON_PrintUnformatted(json) : NULL;
        cJSON_Delete(json);
        if (!text) return cli_error(cmd, "out of memory printing JSON");
        puts(text);
        cJSON_free(text);
    } else {
        pk_report_text(stdout, report);
    }
    fflush(stdout);
    if (o->csv) {
        char *csv = pk_report_csv(report);
        if (!csv || pk_write_file_atomic(o->csv, csv, strlen(csv))) {
            pikv_free(csv);
            return cli_error(cmd, "--csv: %s", pikv_last_error());
        }
        pikv_free(csv);
        show_written(o->csv, (void *)cmd->name);
    }
    if (o->out) return write_report_set(cmd, o->out, report);
    return 0;
}

/* Parse and check the options, apply the scenario, load the model and inputs,
 * run the experiment and emit the report. */
int cmd_compare(int argc, char **argv)
{
    const char *device_flag = NULL;
    compare_options o = {.ratio = 0.5, .experts = 4, .top_k = 2, .eplb_share = 0.7, .context_tokens = 2000,
                         .max_new = 24, .reps = 3, .tasks = QUICK_TASKS, .seed = 1};
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &o.model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&o.weights),
        {"--methods", NULL, OPT_STRING, &o.methods,
         "methods separated by ';', each SPEC or NAME=SPEC (default: the three above)", NULL},
        {"--ratio", NULL, OPT_FLOAT, &o.ratio, "compression ratio {r} (default 0.5)", &o.ratio_seen},
        {"--experts", NULL, OPT_INT, &(cli_int){&o.experts, 1, 4096},
         "experts of the EPLB router {e} (default 4)", &o.experts_seen},
        {"--top-k", NULL, OPT_INT, &(cli_int){&o.top_k, 1, 4096}, "experts per token {k} (default 2)", NULL},
        {"--eplb-share", NULL, OPT_FLOAT, &o.eplb_share, "EPLB's share of the ratio {s} (default 0.7)", NULL},
        {"--scenario", NULL, OPT_STRING, &o.scenario, "preset ratio, experts and context: long-doc-qa, chat, content",
         NULL},
        {"--context-tokens", NULL, OPT_INT, &(cli_int){&o.context_tokens, 64, CLI_MAX_TOKENS},
         "needle-task context length (default 2000; --detailed: all that fits)", &o.context_seen},
        {"--context-file", NULL, OPT_STRING, &o.context_file, "use this text as the context (needs --question)",
         NULL},
        {"--question", "-q", OPT_STRING, &o.question, "the question (default: the needle task's)", NULL},
        {"--max-new-tokens", "-n", OPT_INT, &(cli_int){&o.max_new, 2, CLI_MAX_TOKENS},
         "answer tokens to decode (default 24; at least 2, so that decode speed is measured)", NULL},
        {"--query-aware", NULL, OPT_FLAG, &o.query_aware, "the press sees the question when it compresses", NULL},
        {"--reps", "-r", OPT_INT, &(cli_int){&o.reps, 1, MAX_REPS}, "timed repetitions (default 3)", NULL},
        {"--tasks", NULL, OPT_INT, &(cli_int){&o.tasks, 1, CLI_MAX_TASKS},
         "retrieval tasks per measurement (default 10; 50 with --detailed)",
         &o.tasks_seen},
        {"--detailed", NULL, OPT_FLAG, &o.detailed, "also sweep ratio 0.3/0.5/0.7/0.9, experts 2/4/8, context length, KV type f32/f16/q8_0/q4_0",
         NULL},
        {"--out", NULL, OPT_STRING, &o.out, "write compare.json, compare.csv (and plots) into this directory", NULL},
        {"--json", NULL, OPT_FLAG, &o.json, "print one JSON object instead of the text report", NULL},
        {"--csv", NULL, OPT_STRING, &o.csv, "write one CSV row per method to this file", NULL},
        {"--haystack", NULL, OPT_STRING, &o.haystack,
         "text for needle tasks and perplexity (default: the bundled data/haystack.txt)",
         NULL},
        {"--seed", NULL, OPT_INT, &(cli_int){&o.seed, INT_MIN, INT_MAX}, "task seed (default 1)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&o.threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)", NULL},
        CLI_KV_TYPE_OPTS(o.kv),
        CLI_DEVICE_OPT(&device_flag),
        {"--kv-budget", NULL, OPT_STRING, &o.kv_budget,
         "--device cuda: the KV budget of the capacity table (default 2GiB; 2GiB, 512MiB, ...)", NULL},
    };
    const cli_command cmd = {
        "compare",
        "compare [--model DIR] [--weights T] [--methods 'SPEC;NAME=SPEC;...'] [--ratio R] [--experts E] [--top-k K]\n"
        "       [--eplb-share S] [--scenario NAME] [--context-tokens N | --context-file F --question Q]\n"
        "       [--query-aware] [--reps N] [--tasks N] [--detailed] [--out DIR] [--json] [--csv FILE]\n"
        "       [--kv-type T] [--kv-type-k T] [--kv-type-v T] [--device cpu|cuda [--kv-budget BYTES]]",
        "Compares KV-cache compression methods on one context: the KV bytes each holds after\n"
        "compression, prefill / compression / decode time (medians of --reps repetitions, methods in\n"
        "rotated order), decode and prefill speed, and quality against No Compression (retrieval accuracy\n"
        "on needle tasks, perplexity, KL divergence and top-1 agreement of a continuation, agreement of\n"
        "the greedy answer). No Compression (none) is the baseline; it is added when --methods lacks it.\n"
        "Then the relative improvements and a recommendation: the largest KV reduction that keeps 95% of\n"
        "the baseline's retrieval accuracy and 95% of its perplexity (baseline ppl / method ppl); where\n"
        "the baseline answers no needle task, perplexity alone decides. The context is a needle task (a\n"
        "pass key at half depth in data/haystack.txt) unless --context-file is given. A progress line goes\n"
        "to stderr.\n\n"
        "Methods are press specs; as press specs hold commas, --methods separates them with ';'. In a\n"
        "spec, {r} {e} {k} {s} stand for --ratio, --experts, --top-k and --eplb-share, and the sweeps of\n"
        "--detailed vary them. The default methods are\n"
        "  No Compression        none\n"
        "  Duo Attention         duo:ratio={r}\n"
        "  EPLB + Duo Attention  eplb_duo:ratio={r},experts={e},top_k={k},eplb_share={s}\n"
        "Scenarios (the presets of PiKVpress's comparison; explicit options win): long-doc-qa = ratio\n"
        "0.6, 6 experts, 4000 tokens (capped to what the model holds, with a notice); chat = 0.4, 4, 1000;\n"
        "content = 0.5, 4, 2000. --detailed also sweeps ratio 0.3/0.5/0.7 (PiKVpress's comparison's sweep)\n"
        "and 0.9, experts 2/4/8, context 512/1024/the longest that fits (also its default main\n"
        "context) and the KV cache's type: every method at the main ratio with its cache in f32, f16,\n"
        "q8_0, q4_0 and the --kv-type setting, judged against No Compression in f32, with the bytes\n"
        "it holds against No Compression's in an f32 and in an f16 cache. The recommendation then\n"
        "weighs press and KV type together (the same rule; a row's KV reduction counts its type), and\n"
        "names the type, the bytes, and the nearest setting that would have saved more but kept too\n"
        "little. 50 tasks per point unless --tasks says otherwise; --out DIR then receives\n"
        "compare.json, compare.csv and SVG plots of memory, decode speed and retrieval accuracy for\n"
        "each sweep.\n\n"
        "--device cuda runs every session on the GPU (weights and KV in the --weights type, bf16 unless f32\n"
        "or f16; each method's block says how its press ran there: decided from positions, scored from\n"
        "measures computed on the GPU, scored on the host from a copy of the GPU's cache, or decided by\n"
        "the CPU engine on its own prefill of the prompt, for kvzip) and adds a\n"
        "capacity table: how many sequences of the context each method fits in --kv-budget bytes of KV,\n"
        "and their decode speed together. The KV-type sweep of --detailed stays on the CPU.",
        opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    pikv_session_params params;
    if (cli_session_params(&cmd, o.threads, &o.kv, &params)) return 2;
    cli_device device;
    const char *load_weights;
    if ((rc = cli_device_session(&cmd, device_flag, o.weights, &o.kv, &params, &load_weights, &device))) return rc;
    size_t kv_budget = (size_t)2 << 30;
    if (o.kv_budget && device != CLI_DEVICE_CUDA) return cli_error(&cmd, "--kv-budget: only with --device cuda"), 2;
    if (o.kv_budget && cli_parse_bytes(o.kv_budget, &kv_budget))
        return cli_error(&cmd, "--kv-budget: '%s' is not a size (say 2GiB, 512MiB or 1500000000)", o.kv_budget), 2;
    if (o.scenario) {
        const char *known;
        const pk_scenario *sc = pk_scenario_find(o.scenario, &known);
        if (!sc) return cli_error(&cmd, "--scenario: unknown scenario '%s' (known: %s)", o.scenario, known), 2;
        if (!o.ratio_seen) o.ratio = sc->ratio;
        if (!o.experts_seen) o.experts = sc->experts;
        if (!o.context_seen) o.context_tokens = sc->context_tokens;
    }
    if (o.detailed && !o.tasks_seen) o.tasks = DETAILED_TASKS;
    if ((rc = check_options(&cmd, &o))) return rc;
    /* Find an unwritable destination now, not after the whole experiment. */
    if ((o.out && cli_check_output(&cmd, "--out", o.out, 1)) || (o.csv && cli_check_output(&cmd, "--csv", o.csv, 0)))
        return 1;
    pk_method methods[PK_COMPARE_MAX_METHODS];
    int n_methods = 0;
    if (!o.methods) n_methods = pk_methods_default(methods);
    else if (pk_methods_parse(o.methods, methods, PK_COMPARE_MAX_METHODS, &n_methods))
        return cli_error(&cmd, "--methods: %s", pikv_last_error()), 2;
    if (pk_methods_with_baseline(methods, &n_methods, PK_COMPARE_MAX_METHODS))
        return cli_error(&cmd, "--methods: %s", pikv_last_error()), 2;

    compare_run r = {0};
    pk_compare_config c;
    const char *dir = cli_model_dir(o.model_flag);
    rc = 1;
    if (cli_load(&cmd, dir, load_weights, &r.model, &r.tok)) goto done;
    if (pk_haystack_load(&r.haystack, r.tok, cli_haystack_path(o.haystack))) {
        cli_error(&cmd, "--haystack: %s", pikv_last_error());
        goto done;
    }
    if ((rc = make_inputs(&cmd, &o, &r, &c))) goto done;
    rc = 1;
    if (!(r.session = pikv_session_new_with_params(r.model, &params))) {
        cli_fail(&cmd);
        goto done;
    }
    pikv_model_info info;
    pikv_model_get_info(r.model, &info);
    char model_name[300], machine[300];
    const char *base = strrchr(info.dir, '/') ? strrchr(info.dir, '/') + 1 : info.dir;
    snprintf(model_name, sizeof model_name, "%.200s (%.2f M parameters)", base, info.n_params / 1e6);
    cli_device_describe(device, machine, sizeof machine);
    status_line status = {cmd.name, 0};
    c.haystack = &r.haystack;
    c.model_dir = dir;
    c.session = r.session;
    c.model_name = model_name;
    c.machine = machine;
    c.methods = methods;
    c.n_methods = n_methods;
    c.params = (pk_method_params){o.ratio, o.experts, o.top_k, o.eplb_share};
    c.max_new_tokens = o.max_new;
    c.reps = o.reps;
    c.n_tasks = o.tasks;
    c.query_aware = o.query_aware;
    c.detailed = o.detailed;
    c.seed = (uint64_t)o.seed;
    c.kv_budget = device == CLI_DEVICE_CUDA ? kv_budget : 0;
    c.progress = show_status;
    c.progress_ctx = &status;
    const double load_before = pk_load_average();
    if (pk_compare_run(&c, &r.report)) {
        cli_error(&cmd, "%s", pikv_last_error());
        goto done;
    }
    r.report.load = (pk_machine_load){load_before, pk_load_average(), (int)sysconf(_SC_NPROCESSORS_ONLN),
                                      pikv_session_threads(r.session)};
    rc = emit(&cmd, &o, &r.report);
done:
    run_free(&r);
    return rc;
}
