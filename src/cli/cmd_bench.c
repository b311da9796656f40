/* pikv bench: prefill and decode speed, repeated, as medians with their spread. */
#include "bench/json.h"
#include "bench/noise.h"
#include "bench/timing.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device.h"
#ifdef PIKV_CUDA
#include "cli/cuda/device_cuda.h"
#endif
#include "pikv.h"
#include "util/error.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_REPS = 100 };

/* A row of the results is a press, or with --workers a (press, placement)
 * pair: EPLB placement first, then an equal count of heads per worker. */
enum { MAX_ROWS = 2 * CLI_LIST_MAX };

/* The figures of one timed run of a row. */
enum { PREFILL_TOK_S, DECODE_TOK_S, LOAD_IMBALANCE, N_MEASURES };

typedef struct {
    int n_prompt, n_gen, reps, threads, workers, json, batch, no_graphs, gpus, same_gpu;
    cli_list specs;
    cli_kv_flags kv;
    const char *device;
    const char *kv_budget;       /* --kv-budget as given, or NULL */
} bench_options;

/* What the timed runs share, and what they leave besides their figures. */
typedef struct {
    const bench_options *o;
    pikv_session *s;
    pikv_press *presses[CLI_LIST_MAX];
    int32_t *prompt;
    float *logits;
    int vocab;
    int variants, n_rows;          /* placements per press (1, or 2 with --workers) */
    size_t kv_bytes[MAX_ROWS];     /* held when decoding starts */
    pk_summary sums[MAX_ROWS * N_MEASURES];
    pk_machine_load load;          /* the load average around the timed runs */
} bench_run;

/* One repetition: prefill `n_prompt` tokens into an empty cache (compressed
 * by the press, if any), then decode `n_gen` tokens greedily. Returns tokens/s
 * of each phase (the prefill's includes the compression) and the KV bytes held
 * when decoding starts. */
static int bench_once(pikv_session *s, pikv_press *press, const int32_t *prompt, int n_prompt, int n_gen,
                      float *logits, int vocab, double *prefill_tok_s, double *decode_tok_s, size_t *kv_bytes)
{
    pikv_session_reset(s);
    double t0 = pikv_now();
    if (pikv_prefill(s, prompt, n_prompt, press, logits)) return -1;
    double t1 = pikv_now();
    *kv_bytes = pikv_session_kv_bytes(s);
    pikv_sampling greedy = {.greedy = 1};
    for (int i = 0; i < n_gen; i++) {
        int32_t id = pikv_sample(logits, vocab, &greedy, NULL);
        if (pikv_forward(s, &id, 1, logits, 0)) return -1;
    }
    double t2 = pikv_now();
    *prefill_tok_s = n_prompt / (t1 - t0);
    *decode_tok_s = n_gen ? n_gen / (t2 - t1) : 0;
    return 0;
}

/* The press of a row. */
static int press_of_row(const bench_run *b, int row) { return row / b->variants; }

/* One timed run of a row (pk_rotated_timing's callback): place the workers
 * for the row's policy, run bench_once, and record the mean worker load. */
static int time_row(int row, int rep, double *measure, void *ctx)
{
    (void)rep;
    bench_run *b = ctx;
    const bench_options *o = b->o;
    const int i = press_of_row(b, row);
    if ((o->workers && pikv_session_set_workers(b->s, o->workers, row % b->variants == 0)) ||
        bench_once(b->s, b->presses[i], b->prompt, o->n_prompt, o->n_gen, b->logits, b->vocab,
                   &measure[PREFILL_TOK_S], &measure[DECODE_TOK_S], &b->kv_bytes[row]))
        return pk_fail_prefix("%s", o->specs.items[i]);
    measure[LOAD_IMBALANCE] = pikv_session_worker_imbalance(b->s);
    return 0;
}

/* The progress line, rewritten after every repetition. */
static void show_repetition(int rep, void *ctx)
{
    const bench_run *b = ctx;
    fprintf(stderr, "\rbench: repetition %d/%d", rep + 1, b->o->reps);
}

/* Build the presses and the prompt, warm up, then time every row. Errors are
 * printed; returns 0 or 1. */
static int bench_measure(const cli_command *cmd, pikv_model *m, const char *dir, bench_run *b)
{
    const bench_options *o = b->o;
    for (int i = 0; i < o->specs.n; i++)
        if (!(b->presses[i] = pikv_press_new(o->specs.items[i], m, dir)))
            return cli_error(cmd, "--press: %s", pikv_last_error());
    /* Token ids do not change the arithmetic; a fixed spread of ids keeps runs comparable. */
    for (int i = 0; i < o->n_prompt; i++)
        b->prompt[i] = (int32_t)((7919u * (unsigned)i + 13u) % (unsigned)b->vocab);
    double ignored;
    size_t ignored_bytes;
    /* Warm-up: page in the weights, start the thread pool. */
    if (bench_once(b->s, NULL, b->prompt, o->n_prompt < 16 ? o->n_prompt : 16, 2, b->logits, b->vocab, &ignored,
                   &ignored, &ignored_bytes))
        return cli_fail(cmd);
    const pk_rotated_timing timing = {.n_methods = b->n_rows, .reps = o->reps, .n_measures = N_MEASURES,
                                      .run = time_row, .repetition_done = show_repetition, .ctx = b};
    const double load_before = pk_load_average();
    if (pk_time_rotated(&timing, b->sums)) return cli_error(cmd, "%s", pikv_last_error());
    b->load = (pk_machine_load){load_before, pk_load_average(), (int)sysconf(_SC_NPROCESSORS_ONLN),
                                pikv_session_threads(b->s)};
    fprintf(stderr, "\n");
    return 0;
}

/* The placement cell of a decode row: "W eplb LOAD" or "W equal LOAD". */
static void placement_cell(const bench_run *b, int row, char *out, size_t cap)
{
    if (!b->o->workers) snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%d %s %.2f", b->o->workers, row % b->variants == 0 ? "eplb" : "equal",
                 b->sums[row * N_MEASURES + LOAD_IMBALANCE].median);
}

/* The results as a Markdown table: a prefill line per row, and a decode line
 * unless no tokens were decoded. */
static void print_table(const bench_run *b, const pikv_model_info *info, const char *machine)
{
    const bench_options *o = b->o;
    const char *name = strrchr(info->dir, '/') ? strrchr(info->dir, '/') + 1 : info->dir;
    printf("model %s (%.2f M parameters, %s weights); machine: %s; threads: %d; %d repetitions, median (min..max)\n\n",
           name, info->n_params / 1e6, pikv_weight_type_name(info->weight_type), machine, pikv_session_threads(b->s),
           o->reps);
    printf("| %-36s | %9s | %-11s | %-16s | %-26s |\n", "press", "KV MiB", "workers", "test", "tok/s");
    printf("|%s|%s|%s|%s|%s|\n", "--------------------------------------", "-----------", "-------------",
           "------------------", "----------------------------");
    for (int r = 0; r < b->n_rows; r++) {
        const char *spec = o->specs.items[press_of_row(b, r)];
        const double mib = b->kv_bytes[r] / 1048576.0;
        const pk_summary *pp = &b->sums[r * N_MEASURES + PREFILL_TOK_S], *tg = &b->sums[r * N_MEASURES + DECODE_TOK_S];
        char test[48], val[64], place[40];
        snprintf(test, sizeof test, "pp%d", o->n_prompt);
        snprintf(val, sizeof val, "%.1f (%.1f..%.1f)", pp->median, pp->min, pp->max);
        printf("| %-36s | %9.2f | %-11s | %-16s | %-26s |\n", spec, mib, "-", test, val);
        if (!o->n_gen) continue;
        placement_cell(b, r, place, sizeof place);
        snprintf(test, sizeof test, "tg%d @ ctx %d", o->n_gen, o->n_prompt);
        snprintf(val, sizeof val, "%.1f (%.1f..%.1f)", tg->median, tg->min, tg->max);
        printf("| %-36s | %9.2f | %-11s | %-16s | %-26s |\n", spec, mib, place, test, val);
    }
    if (pk_machine_busy(&b->load))
        printf("\nNOTICE: the machine was busy (1-minute load average %.2f before, %.2f after, on %d cores; idle is "
               "below %.1f per core): these speeds are not results.\n",
               b->load.before, b->load.after, b->load.cores, PK_IDLE_LOAD_PER_CORE);
    /* Decode speed of each row against the first: the ratio is marked when it is not a result. */
    const pk_summary *first = &b->sums[DECODE_TOK_S];
    for (int r = 1; o->n_gen && r < b->n_rows; r++) {
        const pk_summary *tg = &b->sums[r * N_MEASURES + DECODE_TOK_S];
        const pk_speed_verdict v = pk_speed_judge(tg, first, &b->load);
        printf("%sdecode, %s%s vs %s%s: %.2fx%s%s\n", r == 1 ? "\n" : "", o->specs.items[press_of_row(b, r)],
               o->workers ? (r % b->variants == 0 ? " (eplb)" : " (equal)") : "", o->specs.items[0],
               o->workers ? " (eplb)" : "", tg->median / first->median, v == PK_SPEED_SIGNIFICANT ? "" : " -- ",
               v == PK_SPEED_SIGNIFICANT ? "" : pk_speed_verdict_text(v));
    }
}

/* The results as one line of JSON: the setup, then a "presses" array with
 * each row's KV bytes, placement and speeds (bench/json.h's nested layout). */
static int print_json(const bench_run *b, const pikv_model_info *info, const char *machine)
{
    const bench_options *o = b->o;
    cJSON *root = cJSON_CreateObject();
    if (!root) return pk_fail("bench: out of memory for the JSON report");
    cJSON_AddStringToObject(root, "model", info->dir);
    cJSON_AddStringToObject(root, "weights", pikv_weight_type_name(info->weight_type));
    cJSON_AddStringToObject(root, "machine", machine);
    cJSON_AddNumberToObject(root, "threads", pikv_session_threads(b->s));
    cJSON_AddNumberToObject(root, "prompt_tokens", o->n_prompt);
    cJSON_AddNumberToObject(root, "gen_tokens", o->n_gen);
    cJSON_AddNumberToObject(root, "reps", o->reps);
    cJSON *l = cJSON_AddObjectToObject(root, "load_average");
    cJSON_AddNumberToObject(l, "before", b->load.before);
    cJSON_AddNumberToObject(l, "after", b->load.after);
    cJSON_AddBoolToObject(l, "busy", pk_machine_busy(&b->load));
    cJSON *rows = cJSON_AddArrayToObject(root, "presses");
    for (int r = 0; r < b->n_rows; r++) {
        const pk_summary *s = &b->sums[r * N_MEASURES];
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "press", o->specs.items[press_of_row(b, r)]);
        cJSON_AddNumberToObject(row, "kv_bytes", (double)b->kv_bytes[r]);
        if (o->workers) {
            cJSON_AddNumberToObject(row, "workers", o->workers);
            cJSON_AddStringToObject(row, "placement", r % b->variants == 0 ? "eplb" : "equal_count");
            pk_json_number(row, "load_max_over_mean", s[LOAD_IMBALANCE].median);
        }
        pk_json_summary(row, "prefill_tok_s", &s[PREFILL_TOK_S], PK_SUMMARY_NESTED);
        pk_json_summary(row, "decode_tok_s", &s[DECODE_TOK_S], PK_SUMMARY_NESTED);
        if (r > 0 && o->n_gen) {
            /* Decode speed against the first row, and whether that ratio is a result. */
            const pk_summary *first = &b->sums[DECODE_TOK_S];
            pk_json_number(row, "decode_vs_first", s[DECODE_TOK_S].median / first->median);
            cJSON_AddBoolToObject(row, "decode_vs_first_significant",
                                  pk_speed_judge(&s[DECODE_TOK_S], first, &b->load) == PK_SPEED_SIGNIFICANT);
        }
        cJSON_AddItemToArray(rows, row);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return pk_fail("bench: out of memory for the JSON report");
    puts(text);
    cJSON_free(text);
    return 0;
}

/* Print the results in the chosen form. */
static int bench_report(const cli_command *cmd, const bench_run *b, pikv_model *m)
{
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    char machine[300];
    cli_machine(machine, sizeof machine);
    if (b->o->json) return print_json(b, &info, machine) ? cli_fail(cmd) : 0;
    if (b->o->workers) printf("workers column: W, placement, mean max/mean worker load over decode steps\n");
    print_table(b, &info, machine);
    return 0;
}

/* What the per-flag ranges cannot say; the message names the flag. Returns 0 or 2. */
static int check_options(const cli_command *cmd, const bench_options *o)
{
    if (o->workers == 1) return cli_error(cmd, "--workers: must be 2..64 (or 0 for off), got %d", o->workers), 2;
    const int gpu = o->device && strcmp(o->device, "cuda") == 0;
    if (gpu && o->n_gen < 1) return cli_error(cmd, "-n: --device cuda times the decode, so at least 1 token"), 2;
    if (!gpu && (o->batch > 1 || o->no_graphs || o->kv_budget || o->gpus || o->same_gpu))
        return cli_error(cmd, "%s: only with --device cuda",
                         o->batch > 1      ? "--batch"
                         : o->no_graphs    ? "--no-graphs"
                         : o->kv_budget    ? "--kv-budget"
                         : o->gpus         ? "--gpus"
                                           : "--same-gpu"),
               2;
    if (o->same_gpu && !o->gpus) return cli_error(cmd, "--same-gpu: places the ranks of --gpus N; give --gpus"), 2;
    if (o->gpus && o->kv_budget)
        return cli_error(cmd, "--gpus: capacity (--kv-budget) on several GPUs is not built"), 2;
    if (o->kv_budget && o->batch) return cli_error(cmd, "--kv-budget chooses the batch: drop --batch"), 2;
    size_t bytes;
    if (o->kv_budget && cli_parse_bytes(o->kv_budget, &bytes))
        return cli_error(cmd, "--kv-budget: '%s' is not a size (say 2GiB, 512MiB or 1500000000)", o->kv_budget), 2;
    /* What the GPU path does not do yet: say so rather than measure something else. */
    if (gpu && (o->workers || o->json))
        return cli_error(cmd, "--device cuda: %s is not on the GPU yet", o->workers ? "--workers" : "--json"), 2;
    return 0;
}

#ifdef PIKV_CUDA
/* bench --device cuda: each press in turn (none when there is no --press). */
static int bench_on_gpu(const cli_command *cmd, const bench_options *o, const pikv_model *m, const char *dir,
                        const char *weights)
{
    cli_cuda_bench_options g = {weights, o->n_prompt, o->n_gen, o->reps, o->batch ? o->batch : 1, !o->no_graphs,
                                NULL, "none", 0, o->gpus, o->same_gpu};
    if (o->kv_budget) cli_parse_bytes(o->kv_budget, &g.kv_budget);
    int rc = 0;
    for (int i = 0; rc == 0 && i < (o->specs.n ? o->specs.n : 1); i++) {
        g.press_spec = o->specs.n ? o->specs.items[i] : "none";
        if (o->specs.n && !(g.press = pikv_press_new(g.press_spec, m, dir)))
            return cli_error(cmd, "--press: %s", pikv_last_error());
        if (i) printf("\n");
        rc = cli_cuda_bench(cmd, m, dir, &g);
        pikv_press_free(g.press);
        g.press = NULL;
    }
    return rc;
}
#endif

/* Parse the options, load the model, measure every row and print the results. */
int cmd_bench(int argc, char **argv)
{
    const char *model_flag = NULL, *weights = NULL;
    bench_options o = {.n_prompt = 512, .n_gen = 128, .reps = 5};
    const cli_opt opts[] = {
        {"--press", NULL, OPT_LIST, &o.specs, "press to measure (repeatable; default: none)", NULL},
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&weights),
        {"--prompt-tokens", "-p", OPT_INT, &(cli_int){&o.n_prompt, 1, CLI_MAX_TOKENS},
         "prompt length to prefill (default 512)", NULL},
        {"--gen-tokens", "-n", OPT_INT, &(cli_int){&o.n_gen, 0, CLI_MAX_TOKENS},
         "tokens to decode after it (default 128)", NULL},
        {"--reps", "-r", OPT_INT, &(cli_int){&o.reps, 1, MAX_REPS}, "repetitions (default 5)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&o.threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)",
         NULL},
        {"--workers", "-w", OPT_INT, &(cli_int){&o.workers, 0, 64},
         "decode attention on W workers: EPLB vs equal-count placement", NULL},
        CLI_KV_TYPE_OPTS(o.kv),
        {"--json", NULL, OPT_FLAG, &o.json, "print one JSON object", NULL},
        CLI_DEVICE_OPT(&o.device),
        {"--batch", "-b", OPT_INT, &(cli_int){&o.batch, 1, 64},
         "--device cuda: decode this many sequences together (default 1)", NULL},
        {"--kv-budget", NULL, OPT_STRING, &o.kv_budget,
         "--device cuda: admit as many sequences as the press fits in this many KV bytes (2GiB, 512MiB, ...) "
         "and decode them together",
         NULL},
        {"--no-graphs", NULL, OPT_FLAG, &o.no_graphs, "--device cuda: launch every kernel instead of replaying a graph",
         NULL},
        {"--gpus", NULL, OPT_INT, &(cli_int){&o.gpus, 1, 64},
         "--device cuda: decode on N GPUs, each sequence's caches placed across them by DeepSeek's EPLB", NULL},
        {"--same-gpu", NULL, OPT_FLAG, &o.same_gpu,
         "--gpus: put every rank on GPU 0 and exchange by host-ordered copies (checks the merge; not a speed)", NULL},
    };
    const cli_command cmd = {"bench", "bench [--model DIR] [--weights T] [--press SPEC]... [-p PROMPT_TOKENS] [-n GEN_TOKENS]\n"
                             "       [-r REPS] [--threads N] [--workers W] [--kv-type T] [--kv-type-k T] [--kv-type-v T]\n"
                             "       [--json] [--device cpu|cuda [--batch B | --kv-budget BYTES] [--no-graphs]\n"
                             "       [--gpus N [--same-gpu]]]",
                             "Prefills a prompt of P tokens (compressed by each press in turn), then decodes N\n"
                             "tokens, R times; prints the median tokens/s of each phase with the min..max spread,\n"
                             "and the KV bytes held. Decode speed is measured at context P..P+N (before\n"
                             "compression). The presses run in rotated order in every repetition, so that\n"
                             "drift on a shared machine does not favour one of them. With --workers W, decode attention\n"
                             "runs on W workers twice per press: heads placed by DeepSeek's EPLB (heavy heads split\n"
                             "into replicas) and by an equal count of heads per worker; the mean max/mean worker load\n"
                             "is shown beside the speed. With --device cuda each press runs in turn on the GPU:\n"
                             "decided from positions (none, streaming_llm, duo), scored from measures the GPU computes\n"
                             "(knorm, snapkv, tova, observed_attention, expected_attention, pyramidkv, moe_router with\n"
                             "its k-means, eplb_duo, and adakv, chunkkv and per_layer around them), scored on the host\n"
                             "from a copy of the GPU's cache (keydiff, random) or decided by the CPU engine on its own\n"
                             "prefill of the prompt (kvzip, whose reconstruction passes do not run on the GPU), and\n"
                             "applied on the GPU (blocks freed per head; Duo's streaming heads become rings, from the\n"
                             "first token with prefill_chunk). A press that acts while decoding (decoding(...)) runs\n"
                             "one sequence (--batch 1), each step's queries going to it on the host; so does one that\n"
                             "routes queries (moe_router route=1), each layer's queries routed on the host and the\n"
                             "GPU's attention reading only their experts' entries.\n"
                             "--kv-budget measures capacity. --gpus N decodes on N GPUs: every GPU holds the weights,\n"
                             "each (sequence, layer, head) cache is placed by EPLB (long ones cut into slices on\n"
                             "several GPUs), and each layer's attention states are merged over NCCL.",
                             opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = check_options(&cmd, &o))) return rc;
    pikv_session_params params;
    if (cli_session_params(&cmd, o.threads, &o.kv, &params)) return 2;
    cli_device device;
    const char *load_weights;
    if ((rc = cli_device_session(&cmd, o.device, weights, &o.kv, &params, &load_weights, &device))) return rc;

    const char *dir = cli_model_dir(model_flag);
    pikv_model *m;
    if (cli_load(&cmd, dir, load_weights, &m, NULL)) return 1;
    const pikv_config *c = pikv_model_config(m);
    if (o.n_prompt + o.n_gen > c->n_positions) {
        cli_error(&cmd, "-p %d + -n %d exceed the model's %d positions", o.n_prompt, o.n_gen, c->n_positions);
        pikv_model_free(m);
        return 2;
    }
#ifdef PIKV_CUDA
    if (device == CLI_DEVICE_CUDA) {
        rc = bench_on_gpu(&cmd, &o, m, dir, weights);
        pikv_model_free(m);
        return rc;
    }
#endif
    if (o.specs.n == 0) o.specs.items[o.specs.n++] = "none";
    bench_run b = {.o = &o, .vocab = c->vocab_size, .variants = o.workers ? 2 : 1};
    b.n_rows = o.specs.n * b.variants;
    b.s = pikv_session_new_with_params(m, &params);
    b.prompt = pk_malloc_array((size_t)o.n_prompt, sizeof *b.prompt, "prompt");
    b.logits = pk_malloc_array((size_t)c->vocab_size, sizeof *b.logits, "logits");
    if (!b.s || !b.prompt || !b.logits) rc = cli_fail(&cmd);
    else rc = bench_measure(&cmd, m, dir, &b) ? 1 : bench_report(&cmd, &b, m);
    for (int i = 0; i < o.specs.n; i++) pikv_press_free(b.presses[i]);
    pikv_free(b.logits);
    pikv_free(b.prompt);
    pikv_session_free(b.s);
    pikv_model_free(m);
    return rc;
}
