#include "cli/args.h"
#include "pikv.h"
#include "util/error.h"
#include "util/file.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pikv %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail(const cli_command *cmd) { return cli_error(cmd, "%s", pikv_last_error()); }

static void print_help(const cli_command *cmd)
{
    printf("usage: pikv %s\n\n%s\n\noptions:\n", cmd->usage, cmd->summary);
    for (int i = 0; i < cmd->n_opts; i++) {
        const cli_opt *o = &cmd->opts[i];
        char names[64];
        snprintf(names, sizeof names, "%s%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "", o->name,
                 o->kind == OPT_FLAG ? "" : " X");
        printf("  %-26s %s\n", names, o->help);
    }
    printf("  %-26s %s\n", "-h, --help", "show this help");
}

/* Store one option's value, checking that numbers are numbers. */
static int store(const cli_command *cmd, const cli_opt *o, const char *value)
{
    char *end;
    errno = 0;
    switch (o->kind) {
    case OPT_FLAG: *(int *)o->dest = 1; break;
    case OPT_INT: {
        long v = strtol(value, &end, 10);
        if (end == value || *end)
            return cli_error(cmd, "%s: '%s' is not an integer", o->name, value) + 1;
        /* Out of long's range strtol clamps and sets ERANGE: still a range error. */
        const cli_int *dest = o->dest;
        if (errno || v < dest->min || v > dest->max)
            return cli_error(cmd, "%s: must be in %d..%d, got %s", o->name, dest->min, dest->max, value) + 1;
        *dest->value = (int)v;
        break;
    }
    case OPT_FLOAT: {
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v))
            return cli_error(cmd, "%s: '%s' is not a number", o->name, value) + 1;
        *(double *)o->dest = v;
        break;
    }
    case OPT_STRING: *(const char **)o->dest = value; break;
    case OPT_LIST: {
        cli_list *l = o->dest;
        if (l->n == CLI_LIST_MAX) return cli_error(cmd, "%s: at most %d times", o->name, CLI_LIST_MAX) + 1;
        l->items[l->n++] = value;
        break;
    }
    }
    if (o->seen) *o->seen = 1;
    return 0;
}

int cli_parse(const cli_command *cmd, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            print_help(cmd);
            return 1;
        }
        const char *eq = strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const cli_opt *o = NULL;
        for (int j = 0; j < cmd->n_opts && !o; j++) {
            const cli_opt *c = &cmd->opts[j];
            if ((strlen(c->name) == name_len && strncmp(c->name, arg, name_len) == 0) ||
                (c->alias && strcmp(c->alias, arg) == 0))
                o = c;
        }
        if (!o) {
            if (arg[0] == '-') return cli_error(cmd, "unknown option '%s' (see pikv %s --help)", arg, cmd->name) + 1;
            return cli_error(cmd, "unexpected argument '%s' (see pikv %s --help)", arg, cmd->name) + 1;
        }
        const char *value = NULL;
        if (o->kind != OPT_FLAG) {
            if (eq) value = eq + 1;
            else if (i + 1 < argc) value = argv[++i];
            else return cli_error(cmd, "%s needs a value", o->name) + 1;
        } else if (eq) {
            return cli_error(cmd, "%s takes no value", o->name) + 1;
        }
        int rc = store(cmd, o, value);
        if (rc) return rc;
    }
    return 0;
}

char *cli_read_text(const cli_command *cmd, const char *flag, const char *path, size_t *len)
{
    char *text = pk_read_file(path, PK_MAX_TEXT_BYTES, len);
    if (!text) cli_error(cmd, "%s: %s", flag, pikv_last_error());
    return text;
}

int cli_threads(int flag_value) { return flag_value > 0 ? flag_value : omp_get_max_threads(); }

int cli_session_params(const cli_command *cmd, int threads, const cli_kv_flags *kv, pikv_session_params *params)
{
    *params = pikv_session_default_params();
    params->n_threads = cli_threads(threads);
    params->kv_type_k = params->kv_type_v = CLI_DEFAULT_KV_TYPE;
    const struct {
        const char *flag, *name;
        pikv_kv_type *dest[2];
    } given[] = {{"--kv-type", kv->both, {&params->kv_type_k, &params->kv_type_v}},
                 {"--kv-type-k", kv->k, {&params->kv_type_k, NULL}},
                 {"--kv-type-v", kv->v, {&params->kv_type_v, NULL}}};
    for (size_t i = 0; i < sizeof given / sizeof *given; i++) {
        pikv_kv_type t;
        if (!given[i].name) continue;
        if (pikv_kv_type_from_name(given[i].name, &t))
            return cli_error(cmd, "%s: %s", given[i].flag, pikv_last_error()), 2;
        for (int d = 0; d < 2 && given[i].dest[d]; d++) *given[i].dest[d] = t;
    }
    return 0;
}

int cli_check_output(const cli_command *cmd, const char *flag, const char *path, int is_dir)
{
    if (is_dir && mkdir(path, 0777) != 0 && errno != EEXIST)
        return cli_error(cmd, "%s: %s: cannot create the directory: %s", flag, path, strerror(errno));
    if (is_dir ? pk_check_output_dir(path) : pk_check_output_file(path))
        return cli_error(cmd, "%s: %s", flag, pikv_last_error());
    return 0;
}

void cli_machine(char *out, int cap)
{
    char model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "model name", 10) == 0) {
                char *colon = strchr(line, ':');
                if (colon) {
                    snprintf(model, sizeof model, "%s", colon + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        fclose(f);
    }
    snprintf(out, (size_t)cap, "%s, %ld cores, OpenBLAS %s kernels", model, sysconf(_SC_NPROCESSORS_ONLN),
             openblas_get_corename());
}

int cli_parse_weights(const cli_command *cmd, const char *text, pikv_weight_type *type)
{
    for (int t = PIKV_WEIGHTS_AS_STORED; t <= PIKV_WEIGHTS_BF16; t++)
        if (strcmp(text, pikv_weight_type_name((pikv_weight_type)t)) == 0) {
            *type = (pikv_weight_type)t;
            return 0;
        }
    return cli_error(cmd, "--weights: unknown weight type '%s' (known: f32, f16, bf16, stored)", text);
}

int cli_load(const cli_command *cmd, const char *dir, const char *weights, pikv_model **model, pikv_tokenizer **tok)
{
    pikv_model_params params = pikv_model_default_params();
    params.weights = CLI_DEFAULT_WEIGHTS;
    *model = NULL;
    if (weights && cli_parse_weights(cmd, weights, &params.weights)) return 1;
    *model = pikv_model_load_with_params(dir, &params);
    if (!*model) return cli_fail(cmd);
    if (!tok) return 0;
    *tok = pikv_tokenizer_load(dir);
    if (*tok && pikv_tokenizer_check_model(*tok, *model) == 0) return 0;
    if (*tok) pk_fail_prefix("%s", dir);
    pikv_tokenizer_free(*tok);
    *tok = NULL;
    pikv_model_free(*model);
    *model = NULL;
    return cli_fail(cmd);
}

void cli_progress(int done, int total, void *ctx)
{
    fprintf(stderr, "\r%s %d/%d", (const char *)ctx, done, total);
    if (done == total) fputc('\n', stderr);
}

int cli_parse_bytes(const char *text, size_t *out)
{
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"KiB", 1024.0},
                 {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
    char *end;
    const double v = strtod(text, &end);
    if (end == text || !(v > 0) || text[0] == '-' || text[0] == '+') return -1;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (strcmp(end, units[i].unit) == 0) {
            const double bytes = v * units[i].scale;
            if (!(bytes >= 1 && bytes < 1e15)) return -1;
            *out = (size_t)bytes;
            return 0;
        }
    return -1;
}
