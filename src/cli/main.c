/* pikv: the command-line tool. Dispatches to one function per subcommand. */
#include "cli/commands.h"
#include "cli/datadir.h"
#include "pikv_build.h"
#include "util/file.h"

#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} commands[] = {
    {"generate", cmd_generate, "run a prompt through a model and generate text"},
    {"tokenize", cmd_tokenize, "print the token ids of text read on stdin"},
    {"inspect", cmd_inspect, "describe a model: architecture, parameters, dtype, bytes"},
    {"bench", cmd_bench, "measure prefill and decode speed"},
    {"duo-calibrate", cmd_duo_calibrate, "score heads for DuoAttention and write the pattern"},
    {"eval", cmd_eval, "retrieval accuracy of presses on seeded needle tasks"},
    {"eplb", cmd_eplb, "DeepSeek's expert-parallel load balancer on a load matrix (JSON)"},
    {"compare", cmd_compare, "compare KV-cache compression methods: memory, time, speed, quality"},
    {"placement", cmd_placement, "simulate a batch's KV shards placed on GPUs by EPLB, from measured loads"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: pikv COMMAND [options]   (pikv COMMAND --help for its options)\n"
                 "       pikv --version\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nWithout --model, the bundled model models/pikv-ref-14m is used.\n");
}

/* OpenBLAS picks its kernels when it is loaded, by CPU model. Debian 12's 0.3.21
 * does not know CPUs newer than itself (Sapphire and Emerald Rapids among them)
 * and falls back to its generic SSE3 "Prescott" kernels, 4-5x slower than the
 * AVX-512 ones on such a machine. When the user has not chosen a core type and
 * that fallback happened, restart once with the kernels this CPU supports. */
static void prefer_native_blas_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || strcasecmp(openblas_get_corename(), "prescott") != 0) return;
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv); /* only returns on failure: keep the generic kernels */
}

/* SIGINT, SIGTERM, SIGHUP: remove the temporary files and staging directories
 * of writes in progress, then die of the signal as if unhandled. */
static void remove_temporaries_and_die(int sig)
{
    pk_cleanup_now();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void clean_up_on_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = remove_temporaries_and_die;
    sigemptyset(&sa.sa_mask);
    const int signals[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) sigaction(signals[i], &sa, NULL);
}

/* A command's results are its standard output: if they could not all be
 * written (a full disk, a closed pipe), the command failed. A command that
 * failed already said why; one line is enough. */
static int check_stdout(const char *command, int rc)
{
    if (fflush(stdout) == 0 && !ferror(stdout)) return rc;
    if (rc == 0) fprintf(stderr, "pikv%s%s: writing standard output: %s\n", command ? " " : "", command ? command : "",
                         strerror(errno ? errno : EIO));
    return rc ? rc : 1;
}

int main(int argc, char **argv)
{
    prefer_native_blas_kernels(argv);
    clean_up_on_signals();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return check_stdout(NULL, 0);
    }
    if (strcmp(argv[1], "--version") == 0) {
        /* The data directory too: it says which bundled model and text a bare
         * command uses, the first thing to check when an install misbehaves. */
        printf("pikv %s (commit %s)\ndata: %s\n", PIKV_VERSION, PIKV_COMMIT, cli_data_dir());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return check_stdout(commands[i].name, commands[i].run(argc - 1, argv + 1));
    fprintf(stderr, "pikv: unknown command '%s' (see pikv --help)\n", argv[1]);
    return 2;
}
