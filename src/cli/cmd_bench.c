/* pikv bench: prefill and decode speed, repeated, as medians with their spread. */
#include "bench/noise.h"
#include "bench/stats.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "pikv.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { MAX_REPS = 100 };

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

int cmd_bench(int argc, char **argv)
{
    const char *model_flag = NULL;
    int n_prompt = 512, n_gen = 128, reps = 5, threads = 0, json = 0, workers = 0;
    cli_list specs = {0};
    const cli_opt opts[] = {
        {"--press", NULL, OPT_LIST, &specs, "press to measure (repeatable; default: none)", NULL},
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        {"--prompt-tokens", "-p", OPT_INT, &(cli_int){&n_prompt, 1, CLI_MAX_TOKENS},
         "prompt length to prefill (default 512)", NULL},
        {"--gen-tokens", "-n", OPT_INT, &(cli_int){&n_gen, 0, CLI_MAX_TOKENS},
         "tokens to decode after it (default 128)", NULL},
        {"--reps", "-r", OPT_INT, &(cli_int){&reps, 1, MAX_REPS}, "repetitions (default 5)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)", NULL},
        {"--workers", "-w", OPT_INT, &(cli_int){&workers, 0, 64},
         "decode attention on W workers: EPLB vs equal-count placement", NULL},
        {"--json", NULL, OPT_FLAG, &json, "print one JSON object", NULL},
    };
    const cli_command cmd = {"bench", "bench [--model DIR] [--press SPEC]... [-p PROMPT_TOKENS] [-n GEN_TOKENS] [-r REPS]\n"
                             "       [--threads N] [--workers W] [--json]",
                             "Prefills a prompt of P tokens (compressed by each press in turn), then decodes N\n"
                             "tokens, R times; prints the median tokens/s of each phase with the min..max spread,\n"
                             "and the KV bytes held. Decode speed is measured at context P..P+N (before\n"
                             "compression). The presses run in rotated order in every repetition, so that\n"
                             "drift on a shared machine does not favour one of them. With --workers W, decode attention\n"
                             "runs on W workers twice per press: heads placed by DeepSeek's EPLB (heavy heads split\n"
                             "into replicas) and by an equal count of heads per worker; the mean max/mean worker load\n"
                             "is shown beside the speed.",
                             opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (workers == 1)
        return cli_error(&cmd, "--workers: must be 2..64 (or 0 for off), got %d", workers), 2;

    const char *dir = cli_model_dir(model_flag);
    pikv_model *m;
    if (cli_load(&cmd, dir, &m, NULL)) return 1;
    const pikv_config *c = pikv_model_config(m);
    if (n_prompt + n_gen > c->n_positions) {
        cli_error(&cmd, "-p %d + -n %d exceed the model's %d positions", n_prompt, n_gen, c->n_positions);
        pikv_model_free(m);
        return 2;
    }
    if (specs.n == 0) specs.items[specs.n++] = "none";
    pikv_session *s = pikv_session_new(m, cli_threads(threads));
    pikv_press *presses[CLI_LIST_MAX] = {0};
    int32_t *prompt = pk_malloc_array((size_t)n_prompt, sizeof *prompt, "prompt");
    float *logits = pk_malloc_array((size_t)c->vocab_size, sizeof *logits, "logits");
    /* A row is a press, or with workers a (press, placement) pair. */
    enum { MAX_ROWS = 2 * CLI_LIST_MAX };
    static double prefill[MAX_ROWS][MAX_REPS], decode[MAX_ROWS][MAX_REPS], imbalance[MAX_ROWS][MAX_REPS];
    size_t kv_bytes[MAX_ROWS] = {0};
    const int variants = workers ? 2 : 1, n_rows = specs.n * variants;
    rc = 1;
    if (!s || !prompt || !logits) { cli_fail(&cmd); goto done; }
    for (int i = 0; i < specs.n; i++)
        if (!(presses[i] = pikv_press_new(specs.items[i], m, dir))) {
            cli_error(&cmd, "--press: %s", pikv_last_error());
            goto done;
        }
    /* Token ids do not change the arithmetic; a fixed spread of ids keeps runs comparable. */
    for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)((7919u * (unsigned)i + 13u) % (unsigned)c->vocab_size);
    double ignored;
    if (bench_once(s, NULL, prompt, n_prompt < 16 ? n_prompt : 16, 2, logits, c->vocab_size, &ignored, &ignored,
                   &kv_bytes[0])) {
        cli_fail(&cmd); /* warm-up: page in the weights, start the thread pool */
        goto done;
    }
    const double load_before = pk_load_average();
    for (int r = 0; r < reps; r++) {
        for (int k = 0; k < n_rows; k++) {
            int row = (r + k) % n_rows, i = row / variants; /* rotate the order every repetition */
            if ((workers && pikv_session_set_workers(s, workers, row % variants == 0)) ||
                bench_once(s, presses[i], prompt, n_prompt, n_gen, logits, c->vocab_size, &prefill[row][r],
                           &decode[row][r], &kv_bytes[row])) {
                cli_error(&cmd, "%s: %s", specs.items[i], pikv_last_error());
                goto done;
            }
            imbalance[row][r] = pikv_session_worker_imbalance(s);
        }
        fprintf(stderr, "\rbench: repetition %d/%d", r + 1, reps);
    }
    fprintf(stderr, "\n");
    const pk_machine_load machine_load = {load_before, pk_load_average(), (int)sysconf(_SC_NPROCESSORS_ONLN),
                                          pikv_session_threads(s)};
    pk_summary decode_sum[MAX_ROWS];
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    char machine[300];
    cli_machine(machine, sizeof machine);
    const int n_threads = pikv_session_threads(s);
    const char *name = strrchr(info.dir, '/') ? strrchr(info.dir, '/') + 1 : info.dir;
    cJSON *o = json ? cJSON_CreateObject() : NULL, *rows = NULL;
    if (workers)
        printf("%s", json ? "" : "workers column: W, placement, mean max/mean worker load over decode steps\n");
    if (json) {
        cJSON_AddStringToObject(o, "model", info.dir);
        cJSON_AddStringToObject(o, "machine", machine);
        cJSON_AddNumberToObject(o, "threads", n_threads);
        cJSON_AddNumberToObject(o, "prompt_tokens", n_prompt);
        cJSON_AddNumberToObject(o, "gen_tokens", n_gen);
        cJSON_AddNumberToObject(o, "reps", reps);
        cJSON *l = cJSON_AddObjectToObject(o, "load_average");
        cJSON_AddNumberToObject(l, "before", machine_load.before);
        cJSON_AddNumberToObject(l, "after", machine_load.after);
        cJSON_AddBoolToObject(l, "busy", pk_machine_busy(&machine_load));
        rows = cJSON_AddArrayToObject(o, "presses");
    } else {
        printf("model %s (%.2f M parameters); machine: %s; threads: %d; %d repetitions, median (min..max)\n\n",
               name, info.n_params / 1e6, machine, n_threads, reps);
        printf("| %-36s | %9s | %-11s | %-16s | %-26s |\n", "press", "KV MiB", "workers", "test", "tok/s");
        printf("|%s|%s|%s|%s|%s|\n", "--------------------------------------", "-----------", "-------------",
               "------------------", "----------------------------");
    }
    for (int r = 0; r < n_rows; r++) {
        const int i = r / variants;
        pk_summary pp = pk_summarize(prefill[r], reps), tg = pk_summarize(decode[r], reps),
                   load = pk_summarize(imbalance[r], reps);
        const char *policy = r % variants == 0 ? "eplb" : "equal_count";
        decode_sum[r] = tg;
        char place[40] = "-";
        if (workers) snprintf(place, sizeof place, "%d %s %.2f", workers, r % variants == 0 ? "eplb" : "equal", load.median);
        if (json) {
            cJSON *row = cJSON_CreateObject();
            cJSON_AddStringToObject(row, "press", specs.items[i]);
            cJSON_AddNumberToObject(row, "kv_bytes", (double)kv_bytes[r]);
            if (workers) {
                cJSON_AddNumberToObject(row, "workers", workers);
                cJSON_AddStringToObject(row, "placement", policy);
                cJSON_AddNumberToObject(row, "load_max_over_mean", load.median);
            }
            const pk_summary *sums[2] = {&pp, &tg};
            const char *names[2] = {"prefill_tok_s", "decode_tok_s"};
            for (int k = 0; k < 2; k++) {
                cJSON *x = cJSON_AddObjectToObject(row, names[k]);
                cJSON_AddNumberToObject(x, "median", sums[k]->median);
                cJSON_AddNumberToObject(x, "min", sums[k]->min);
                cJSON_AddNumberToObject(x, "max", sums[k]->max);
            }
            if (r > 0 && n_gen) {
                /* Decode speed against the first row, and whether that ratio is a result. */
                cJSON_AddNumberToObject(row, "decode_vs_first", tg.median / decode_sum[0].median);
                cJSON_AddBoolToObject(row, "decode_vs_first_significant",
                                      pk_speed_judge(&tg, &decode_sum[0], &machine_load) == PK_SPEED_SIGNIFICANT);
            }
            cJSON_AddItemToArray(rows, row);
            continue;
        }
        char test[48], val[64];
        snprintf(test, sizeof test, "pp%d", n_prompt);
        snprintf(val, sizeof val, "%.1f (%.1f..%.1f)", pp.median, pp.min, pp.max);
        printf("| %-36s | %9.2f | %-11s | %-16s | %-26s |\n", specs.items[i], kv_bytes[r] / 1048576.0, "-", test,
               val);
        if (n_gen) {
            snprintf(test, sizeof test, "tg%d @ ctx %d", n_gen, n_prompt);
            snprintf(val, sizeof val, "%.1f (%.1f..%.1f)", tg.median, tg.min, tg.max);
            printf("| %-36s | %9.2f | %-11s | %-16s | %-26s |\n", specs.items[i], kv_bytes[r] / 1048576.0, place,
                   test, val);
        }
    }
    if (!json && pk_machine_busy(&machine_load))
        printf("\nNOTICE: the machine was busy (1-minute load average %.2f before, %.2f after, on %d cores; idle is "
               "below %.1f per core): these speeds are not results.\n",
               machine_load.before, machine_load.after, machine_load.cores, PK_IDLE_LOAD_PER_CORE);
    /* Decode speed of each row against the first: the ratio is marked when it is not a result. */
    for (int r = 1; !json && n_gen && r < n_rows; r++) {
        const pk_speed_verdict v = pk_speed_judge(&decode_sum[r], &decode_sum[0], &machine_load);
        printf("%sdecode, %s%s vs %s%s: %.2fx%s%s\n", r == 1 ? "\n" : "", specs.items[r / variants],
               workers ? (r % variants == 0 ? " (eplb)" : " (equal)") : "", specs.items[0], workers ? " (eplb)" : "",
               decode_sum[r].median / decode_sum[0].median, v == PK_SPEED_SIGNIFICANT ? "" : " -- ",
               v == PK_SPEED_SIGNIFICANT ? "" : pk_speed_verdict_text(v));
    }
    if (json) {
        char *text = cJSON_PrintUnformatted(o);
        if (text) puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
    }
    rc = 0;
done:
    for (int i = 0; i < specs.n; i++) pikv_press_free(presses[i]);
    pikv_free(logits);
    pikv_free(prompt);
    pikv_session_free(s);
    pikv_model_free(m);
    return rc;
}
