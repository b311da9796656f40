/* Command-line options shared by every `pikv` subcommand: a table per command,
 * one parser, and errors of the form "pikv CMD: --flag: what is wrong". */
#ifndef PIKV_CLI_ARGS_H
#define PIKV_CLI_ARGS_H

#include "cli/datadir.h" /* the defaults of --model and --haystack */
#include "pikv.h"

#include <stddef.h>

typedef enum { OPT_FLAG, OPT_INT, OPT_FLOAT, OPT_STRING, OPT_LIST } cli_kind;

enum { CLI_LIST_MAX = 64 };

/* Bounds shared by integer flags: token counts cannot pass the largest
 * n_positions a config.json may give (each command then checks the model's
 * own), and thread counts stay within what a session accepts. */
enum { CLI_MAX_TOKENS = 1 << 24, CLI_MAX_THREADS = 4096, CLI_MAX_TASKS = 100000 };

/* Repeatable string option (e.g. --question). */
typedef struct {
    const char *items[CLI_LIST_MAX];
    int n;
} cli_list;

typedef struct {
    const char *name;    /* "--max-new-tokens" */
    const char *alias;   /* "-n" or NULL */
    cli_kind kind;
    void *dest;          /* cli_int*, double*, const char**, cli_list* */
    const char *help;
    int *seen;           /* optional: set to 1 when given */
} cli_opt;

/* The dest of an OPT_INT option: the variable and the range the parser
 * accepts, written in the table as &(cli_int){&var, MIN, MAX}. */
typedef struct {
    int *value;
    int min, max;
} cli_int;

typedef struct {
    const char *name;     /* "generate" */
    const char *usage;    /* one line after "usage: pikv " */
    const char *summary;  /* one paragraph */
    const cli_opt *opts;
    int n_opts;
} cli_command;

/* Parse argv[1..] (argv[0] is the command name). Returns 0 to go on, 1 when
 * --help was printed, 2 on a usage error (already printed to stderr). */
int cli_parse(const cli_command *cmd, int argc, char **argv);

/* Print "pikv CMD: message" to stderr; returns 1 for `return cli_error(...)`. */
int cli_error(const cli_command *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Report the library's last error under the command's name; returns 1. */
int cli_fail(const cli_command *cmd);

/* Read a whole text file given to a flag; errors name the flag and file. */
char *cli_read_text(const cli_command *cmd, const char *flag, const char *path, size_t *len);

/* Check an output path given to `flag` before a long run: a directory (is_dir,
 * created when missing) must be writable; a file must be one pikv may write
 * (see pk_output_kind) in a writable directory. Prints the error; returns 1. */
int cli_check_output(const cli_command *cmd, const char *flag, const char *path, int is_dir);

/* The threads a session gets for --threads N: N, or for 0 OpenMP's default,
 * which honours OMP_NUM_THREADS (set by the user, or lowered at start to fit
 * an address-space limit; see preinit.c) and is otherwise every core. */
int cli_threads(int flag_value);

/* The weights of commands without --weights, and of those given none. */
#define CLI_DEFAULT_WEIGHTS PIKV_WEIGHTS_AS_STORED
/* The KV cache type of commands given no --kv-type: f16 halves the bytes of
 * f32 and, on the bundled model, kept retrieval and perplexity (50 tasks:
 * 0.94 either way, perplexity +0.02 %) and decoded faster. The library's
 * default stays f32, exact. */
#define CLI_DEFAULT_KV_TYPE PIKV_KV_F16
/* The --weights line of a command's options; dest is a const char *. */
#define CLI_WEIGHTS_OPT(dest) \
    {"--weights", NULL, OPT_STRING, (dest), "weights in memory: f32, f16, bf16 or stored (default: as stored)", NULL}

/* The KV cache type flags as given (NULL when absent): --kv-type for keys
 * and values, --kv-type-k and --kv-type-v for one of them (they win). */
typedef struct {
    const char *both, *k, *v;
} cli_kv_flags;

/* The three rows of a command's option table for the KV type flags. */
#define CLI_KV_TYPE_OPTS(flags)                                                                                     \
    {"--kv-type", NULL, OPT_STRING, &(flags).both,                                                                 \
     "KV cache type of keys and values: f32, f16 (default), bf16, q8_0, q4_0", NULL},                             \
        {"--kv-type-k", NULL, OPT_STRING, &(flags).k, "KV cache type of the keys (overrides --kv-type)", NULL},    \
        {"--kv-type-v", NULL, OPT_STRING, &(flags).v, "KV cache type of the values (overrides --kv-type)", NULL}

struct pikv_session_params;
/* Session options for --threads N and the KV type flags. A type name that is
 * not one is printed as "pikv CMD: --kv-type-k: ..." and returns 2 (a usage
 * error, found before anything is loaded). */
int cli_session_params(const cli_command *cmd, int threads, const cli_kv_flags *kv,
                       struct pikv_session_params *params);

/* The type a --weights value names, by the library's own names (an unknown
 * name is printed as an error and returns 1). */
int cli_parse_weights(const cli_command *cmd, const char *text, pikv_weight_type *type);

struct pikv_model;
struct pikv_tokenizer;
/* Load the model, its matrices in the type --weights names (`weights`; NULL
 * for CLI_DEFAULT_WEIGHTS), and (when tok != NULL) its tokenizer from dir; on
 * failure print the error under the command's name and return 1. */
int cli_load(const cli_command *cmd, const char *dir, const char *weights, struct pikv_model **model,
             struct pikv_tokenizer **tok);

/* A progress callback for long library loops: "\rLABEL done/total" on stderr,
 * ending the line at the last step; ctx is the label (a string). */
void cli_progress(int done, int total, void *ctx);

/* A byte count: digits with an optional fraction and unit (B; KB, MB, GB
 * of 1000; KiB, MiB, GiB of 1024). 0 on success, -1 for anything else. */
int cli_parse_bytes(const char *text, size_t *out);

/* Machine description for reports: CPU model, cores. */
void cli_machine(char *out, int cap);

#endif
