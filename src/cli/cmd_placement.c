/* pikv placement: a decode batch's KV shards placed on simulated GPUs by
 * DeepSeek's EPLB and by an equal count, from shard loads measured on real
 * compressed caches, with a modeled step time (bench/gpu_cost.h), beside
 * whole sequences on GPUs (data parallelism) for comparison. */
#include "bench/gpu_cost.h"
#include "bench/json.h"
#include "bench/shard_loads.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "util/error.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_GPUS = 4096, EPLB = 0, EQUAL = 1, BY_SEQUENCE = 2 };

typedef struct {
    int gpus;
    pk_gpu_result r[3]; /* shards by EPLB, shards by equal count, whole sequences */
} gpu_row;

typedef struct {
    const char *spec;
    double kept;      /* entries held / entries of the uncompressed contexts */
    double kv_bytes;  /* the whole batch's */
    gpu_row rows[CLI_LIST_MAX];
} press_result;

typedef struct {
    int batch, tokens, measure, json, seed, threads;
    int gpus[CLI_LIST_MAX], n_gpus;
    pk_gpu_links links;
} placement_options;

/* "1,2,4": GPU counts, each in 1..MAX_GPUS. */
static int parse_gpus(const cli_command *cmd, const char *text, placement_options *o)
{
    const char *p = text;
    o->n_gpus = 0;
    for (;;) {
        char *end;
        const long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > MAX_GPUS || (*end && *end != ',') || o->n_gpus == CLI_LIST_MAX)
            return cli_error(cmd, "--gpus: '%s' is not a comma-separated list of up to %d GPU counts in 1..%d", text,
                             CLI_LIST_MAX, MAX_GPUS);
        o->gpus[o->n_gpus++] = (int)v;
        if (!*end) return 0;
        p = end + 1;
    }
}

/* Bandwidths must be positive, fixed costs not negative: the flag at fault is named. */
static int check_links(const cli_command *cmd, const pk_gpu_links *k)
{
    const struct {
        const char *flag;
        double v, min;
    } given[] = {{"--hbm-gbs", k->hbm_gbs, 0}, {"--nvlink-gbs", k->nvlink_gbs, 0}, {"--ib-gbs", k->ib_gbs, 0},
                 {"--nvlink-us", k->nvlink_us, -1}, {"--ib-us", k->ib_us, -1}, {"--rest-us", k->rest_us, -1}};
    for (size_t i = 0; i < sizeof given / sizeof *given; i++) {
        const int ok = given[i].min < 0 ? given[i].v >= 0 : given[i].v > 0;
        if (!ok)
            return cli_error(cmd, "%s: must be %s, got %g", given[i].flag, given[i].min < 0 ? ">= 0" : "> 0",
                             given[i].v);
    }
    return 0;
}

/* Measure one press's shard loads and place them for every GPU count. */
static int simulate_press(pikv_session *s, pikv_press *press, const pk_haystack *h, const placement_options *o,
                          size_t entry_bytes, size_t weight_bytes, press_result *out)
{
    const pikv_config *c = pikv_model_config(pikv_session_model(s));
    const int L = c->n_layer, H = c->n_head, N = o->batch * H;
    int *measured = pk_malloc_array((size_t)o->measure * L * H, sizeof *measured, "shard loads");
    int *shards = pk_malloc_array((size_t)L * N, sizeof *shards, "shard loads");
    char label[300];
    int rc = -1;
    snprintf(label, sizeof label, "%s: prefill", out->spec);
    if (!measured || !shards ||
        pk_measure_head_lens(s, press, h, o->measure, o->tokens, (uint64_t)o->seed, cli_progress, label, measured))
        goto done;
    pk_batch_shards(measured, o->measure, L, H, o->batch, shards);
    double entries = 0;
    for (size_t i = 0; i < (size_t)L * N; i++) entries += shards[i];
    out->kept = entries / ((double)L * N * o->tokens);
    out->kv_bytes = entries * (double)entry_bytes;
    for (int i = 0; i < o->n_gpus; i++) {
        gpu_row *row = &out->rows[i];
        row->gpus = o->gpus[i];
        for (int k = 0; k < 2; k++)
            if (pk_gpu_simulate(shards, L, N, row->gpus, k == EPLB ? PK_PLACE_EPLB : PK_PLACE_EQUAL_COUNT,
                                entry_bytes, c->head_dim, weight_bytes, &o->links, &row->r[k]))
                goto done;
        if (pk_gpu_by_sequence(shards, L, H, o->batch, row->gpus, entry_bytes, weight_bytes, &o->links,
                               &row->r[BY_SEQUENCE]))
            goto done;
    }
    rc = 0;
done:
    pk_free(measured);
    pk_free(shards);
    return rc;
}

/* A byte count in B, kB, MB or GB (powers of 1000). */
static const char *bytes_text(double b, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "kB", "MB", "GB"};
    int u = 0;
    while (b >= 1000 && u < 3) b /= 1000, u++;
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", b, units[u]);
    return buf;
}

static void print_header(const placement_options *o, const pikv_model_info *info, const pikv_config *c,
                         size_t entry_bytes, pikv_kv_type tk, pikv_kv_type tv)
{
    const pk_gpu_links *k = &o->links;
    char w[32];
    const char *name = strrchr(info->dir, '/') ? strrchr(info->dir, '/') + 1 : info->dir;
    printf("KV shards of a decode batch placed on GPUs: a simulation from measured shard loads (no GPU used)\n");
    printf("model: %s (%d layers x %d heads of %d), KV %s/%s: %zu bytes an entry; weights %s: %s on every GPU\n",
           name, c->n_layer, c->n_head, c->head_dim, pikv_kv_type_name(tk), pikv_kv_type_name(tv), entry_bytes,
           pikv_weight_type_name(info->weight_type), bytes_text((double)info->weight_bytes, w, sizeof w));
    printf("batch: %d sequences x %d tokens, %d shards a layer; shard loads measured on %d prefill%s of "
           "needle-task contexts (seed %d on)",
           o->batch, o->tokens, o->batch * c->n_head, o->measure, o->measure > 1 ? "s" : "", o->seed);
    if (o->measure < o->batch) printf(", sequence b reusing prefill b mod %d", o->measure);
    putchar('\n');
    printf("modeled step time (a model, not a measurement): the weights read once, then per layer the busiest GPU's\n"
           "KV read at %g GB/s HBM and an all-gather of partial states (%zu bytes per shard a GPU holds) costing\n"
           "%g us + bytes / %g GB/s NVLink within a node of %d GPUs, %g us + bytes / %g GB/s InfiniBand per GPU "
           "across nodes,\n",
           k->hbm_gbs, pk_partial_state_bytes(c->head_dim), k->nvlink_us, k->nvlink_gbs, k->gpus_per_node, k->ib_us,
           k->ib_gbs);
    if (k->rest_us > 0)
        printf("and the rest of the step (products, layer norms, launches) %g us on every GPU, as given\n", k->rest_us);
    else
        printf("and nothing for the rest of the step (products, layer norms, launches): give its measured time with "
               "--rest-us\n");
    printf("columns: KV bytes per GPU; max/mean of the busiest GPU's entries, summed over layers; slices and shards\n"
           "split over several GPUs by EPLB, all layers; bytes into a GPU per step with EPLB; step time with the\n"
           "shards placed by EPLB, by equal count, and with whole sequences on GPUs (no exchange)\n");
}

static void print_press(const placement_options *o, const press_result *p)
{
    char a[32], b[32], d[32], e[32];
    printf("\npress %s: %.1f%% of entries kept, %s of KV\n\n", p->spec, 100 * p->kept,
           bytes_text(p->kv_bytes, a, sizeof a));
    printf("| GPUs | KV/GPU mean | max EPLB | max equal | load EPLB | load equal | slices | split | exchange/step "
           "| step EPLB | step equal | step by sequence |\n");
    printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < o->n_gpus; i++) {
        const gpu_row *r = &p->rows[i];
        const pk_gpu_result *ep = &r->r[EPLB], *eq = &r->r[EQUAL];
        printf("| %d | %s | %s | %s | %.3f | %.3f | %ld | %ld | %s | %.1f us | %.1f us | %.1f us |\n", r->gpus,
               bytes_text(ep->cost.kv_bytes_mean, a, sizeof a), bytes_text(ep->cost.kv_bytes_max, b, sizeof b),
               bytes_text(eq->cost.kv_bytes_max, d, sizeof d), ep->imbalance, eq->imbalance, ep->slices, ep->split,
               bytes_text(ep->cost.exchange_bytes, e, sizeof e), ep->cost.step_us, eq->cost.step_us,
               r->r[BY_SEQUENCE].cost.step_us);
    }
}

static cJSON *json_result(const pk_gpu_result *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    pk_json_number(o, "kv_bytes_max", r->cost.kv_bytes_max);
    pk_json_number(o, "load_max_over_mean", r->imbalance);
    cJSON_AddNumberToObject(o, "slices", (double)r->slices);
    cJSON_AddNumberToObject(o, "split_shards", (double)r->split);
    pk_json_number(o, "exchange_bytes_per_step", r->cost.exchange_bytes);
    pk_json_number(o, "weights_us", r->cost.weights_us);
    pk_json_number(o, "kv_read_us", r->cost.kv_read_us);
    pk_json_number(o, "exchange_us", r->cost.exchange_us);
    pk_json_number(o, "rest_us", r->cost.rest_us);
    pk_json_number(o, "step_us", r->cost.step_us);
    return o;
}

static int print_json(const placement_options *o, const pikv_model_info *info, const pikv_config *c,
                      size_t entry_bytes, const press_result *res, int n_press)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return pk_fail("placement: out of memory for the JSON report");
    cJSON_AddStringToObject(root, "model", info->dir);
    cJSON_AddNumberToObject(root, "layers", c->n_layer);
    cJSON_AddNumberToObject(root, "heads", c->n_head);
    cJSON_AddNumberToObject(root, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(root, "entry_bytes", (double)entry_bytes);
    cJSON_AddNumberToObject(root, "weight_bytes", (double)info->weight_bytes);
    cJSON_AddNumberToObject(root, "batch", o->batch);
    cJSON_AddNumberToObject(root, "tokens", o->tokens);
    cJSON_AddNumberToObject(root, "measured_sequences", o->measure);
    cJSON_AddNumberToObject(root, "partial_state_bytes", (double)pk_partial_state_bytes(c->head_dim));
    cJSON *model = cJSON_AddObjectToObject(root, "cost_model");
    cJSON_AddNumberToObject(model, "hbm_gbs", o->links.hbm_gbs);
    cJSON_AddNumberToObject(model, "nvlink_gbs", o->links.nvlink_gbs);
    cJSON_AddNumberToObject(model, "ib_gbs", o->links.ib_gbs);
    cJSON_AddNumberToObject(model, "nvlink_us", o->links.nvlink_us);
    cJSON_AddNumberToObject(model, "ib_us", o->links.ib_us);
    cJSON_AddNumberToObject(model, "gpus_per_node", o->links.gpus_per_node);
    cJSON_AddNumberToObject(model, "rest_us", o->links.rest_us);
    cJSON *presses = cJSON_AddArrayToObject(root, "presses");
    for (int i = 0; i < n_press; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToArray(presses, p);
        cJSON_AddStringToObject(p, "press", res[i].spec);
        pk_json_number(p, "kept", res[i].kept);
        pk_json_number(p, "kv_bytes", res[i].kv_bytes);
        cJSON *rows = cJSON_AddArrayToObject(p, "gpus");
        for (int g = 0; g < o->n_gpus; g++) {
            const gpu_row *r = &res[i].rows[g];
            cJSON *row = cJSON_CreateObject();
            cJSON_AddItemToArray(rows, row);
            cJSON_AddNumberToObject(row, "gpus", r->gpus);
            pk_json_number(row, "kv_bytes_mean", r->r[EPLB].cost.kv_bytes_mean);
            cJSON_AddItemToObject(row, "eplb", json_result(&r->r[EPLB]));
            cJSON_AddItemToObject(row, "equal_count", json_result(&r->r[EQUAL]));
            cJSON_AddItemToObject(row, "by_sequence", json_result(&r->r[BY_SEQUENCE]));
        }
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return pk_fail("placement: out of memory for the JSON report");
    puts(text);
    cJSON_free(text);
    return 0;
}

int cmd_placement(int argc, char **argv)
{
    const char *model_flag = NULL, *haystack = NULL, *weights = NULL, *gpus = "1,2,4,8,16,32,64";
    cli_list presses = {0};
    cli_kv_flags kv_flags = {0};
    placement_options o = {.batch = 64, .tokens = 2000, .measure = 8, .seed = 1,
                           .links = {.hbm_gbs = 4800, .nvlink_gbs = 450, .ib_gbs = 50, .nvlink_us = 10,
                                     .ib_us = 20, .gpus_per_node = 8}};
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
        CLI_WEIGHTS_OPT(&weights),
        {"--press", NULL, OPT_LIST, &presses, "press to measure (repeatable; default: duo:0.75)", NULL},
        {"--batch", "-b", OPT_INT, &(cli_int){&o.batch, 1, 1 << 16}, "sequences in the batch (default 64)", NULL},
        {"--tokens", "-p", OPT_INT, &(cli_int){&o.tokens, 64, CLI_MAX_TOKENS},
         "context tokens of each sequence (default 2000)", NULL},
        {"--measure", NULL, OPT_INT, &(cli_int){&o.measure, 1, 1 << 16},
         "contexts actually prefilled; the batch reuses them in turn (default 8, at most --batch)", NULL},
        {"--gpus", "-g", OPT_STRING, &gpus, "GPU counts to place on, comma-separated (default 1,2,4,8,16,32,64)",
         NULL},
        {"--gpus-per-node", NULL, OPT_INT, &(cli_int){&o.links.gpus_per_node, 1, MAX_GPUS},
         "GPUs a node: more GPUs use InfiniBand (default 8)", NULL},
        {"--hbm-gbs", NULL, OPT_FLOAT, &o.links.hbm_gbs, "memory bandwidth of a GPU, GB/s (default 4800, H200)",
         NULL},
        {"--nvlink-gbs", NULL, OPT_FLOAT, &o.links.nvlink_gbs,
         "NVLink per GPU and direction, GB/s (default 450, NVLink 4)", NULL},
        {"--ib-gbs", NULL, OPT_FLOAT, &o.links.ib_gbs,
         "InfiniBand per GPU and direction, GB/s (default 50, one 400 Gb/s NIC a GPU)", NULL},
        {"--nvlink-us", NULL, OPT_FLOAT, &o.links.nvlink_us, "fixed cost of an all-gather in a node, us (default 10)",
         NULL},
        {"--ib-us", NULL, OPT_FLOAT, &o.links.ib_us, "fixed cost of an all-gather across nodes, us (default 20)",
         NULL},
        {"--rest-us", NULL, OPT_FLOAT, &o.links.rest_us,
         "the rest of a step on every GPU (products, norms, launches), us, as measured (default 0: left out)", NULL},
        {"--haystack", NULL, OPT_STRING, &haystack, "text of the contexts (default: the bundled data/haystack.txt)",
         NULL},
        {"--seed", NULL, OPT_INT, &(cli_int){&o.seed, 0, 1 << 30}, "seed of the first context (default 1)", NULL},
        {"--threads", "-t", OPT_INT, &(cli_int){&o.threads, 0, CLI_MAX_THREADS}, "threads (default: all cores)",
         NULL},
        CLI_KV_TYPE_OPTS(kv_flags),
        {"--json", NULL, OPT_FLAG, &o.json, "print the results as one line of JSON", NULL},
    };
    const cli_command cmd = {
        "placement",
        "placement [--press SPEC]... [--batch B] [--tokens T] [--measure M] [--gpus LIST] [--gpus-per-node N]\n"
        "       [--hbm-gbs X] [--nvlink-gbs X] [--ib-gbs X] [--nvlink-us X] [--ib-us X] [--rest-us X] [--kv-type T]\n"
        "       [--json]",
        "Prefills M needle-task contexts of T tokens with each press, reads how many entries every head's cache\n"
        "kept, and makes a batch of B sequences of them (reusing the M in turn). For each GPU count it places every\n"
        "layer's B x n_head KV shards on the GPUs by DeepSeek's EPLB (hot shards cut into slices on several GPUs)\n"
        "and by an equal count of shards (tensor parallelism's split of heads), and prints the KV bytes per GPU,\n"
        "the load balance, the slices, the partial softmax states exchanged per decode step and a step time\n"
        "modeled from the stated bandwidths, beside the step with whole sequences on the GPUs (data parallelism,\n"
        "no exchange). Only the shard loads are measured; no GPU is used.",
        opts, sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (parse_gpus(&cmd, gpus, &o) || check_links(&cmd, &o.links)) return 2;
    if (o.measure > o.batch)
        return cli_error(&cmd, "--measure: %d contexts is more than the batch of %d", o.measure, o.batch), 2;
    if (presses.n == 0) presses.items[presses.n++] = "duo:0.75";
    pikv_session_params params;
    if (cli_session_params(&cmd, o.threads, &kv_flags, &params)) return 2;

    const char *dir = cli_model_dir(model_flag);
    pikv_model *m;
    pikv_tokenizer *tok;
    if (cli_load(&cmd, dir, weights, &m, &tok)) return 1;
    const pikv_config *c = pikv_model_config(m);
    pk_haystack h = {0};
    pikv_session *s = NULL;
    press_result *res = NULL;
    rc = 1;
    if (o.tokens > c->n_positions) {
        cli_error(&cmd, "--tokens: %d exceeds the model's %d positions", o.tokens, c->n_positions);
        goto out;
    }
    if (pk_haystack_load(&h, tok, cli_haystack_path(haystack))) {
        cli_error(&cmd, "--haystack: %s", pikv_last_error());
        goto out;
    }
    if (!(s = pikv_session_new_with_params(m, &params)) ||
        !(res = pk_calloc((size_t)presses.n, sizeof *res, "placement results"))) {
        cli_fail(&cmd);
        goto out;
    }
    pikv_model_info info;
    pikv_model_get_info(m, &info);
    const size_t entry_bytes = pk_session_entry_bytes(s);
    for (int i = 0; i < presses.n; i++) {
        pikv_press *p = pikv_press_new(presses.items[i], m, dir);
        if (!p) {
            cli_error(&cmd, "--press: %s", pikv_last_error());
            goto out;
        }
        res[i].spec = presses.items[i];
        const int failed = simulate_press(s, p, &h, &o, entry_bytes, info.weight_bytes, &res[i]);
        pikv_press_free(p);
        if (failed) {
            cli_fail(&cmd);
            goto out;
        }
    }
    if (o.json) {
        if (print_json(&o, &info, c, entry_bytes, res, presses.n)) {
            cli_fail(&cmd);
            goto out;
        }
    } else {
        pikv_kv_type tk, tv;
        pikv_session_kv_types(s, &tk, &tv);
        print_header(&o, &info, c, entry_bytes, tk, tv);
        for (int i = 0; i < presses.n; i++) print_press(&o, &res[i]);
    }
    rc = 0;
out:
    pk_free(res);
    pikv_session_free(s);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    return rc;
}
