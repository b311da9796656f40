/* `pikv eplb`: run DeepSeek's Expert Parallelism Load Balancer on a JSON file of
 * load matrices and print the placement as JSON (see router/eplb.h). */
#include "pikv.h"
#include "router/eplb.h"
#include "util/file.h"
#include "util/mem.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char eplb_usage[] =
    "usage: pikv eplb --input FILE.json\n"
    "\n"
    "Run DeepSeek's Expert Parallelism Load Balancer (EPLB) on expert loads.\n"
    "\n"
    "FILE.json holds one object, or a list of them:\n"
    "  {\"weight\": [[load of each expert] for each layer],\n"
    "   \"num_replicas\": R, \"num_groups\": G, \"num_nodes\": N, \"num_gpus\": D}\n"
    "Loads are finite and >= 0; experts % G == 0, R >= experts, R % D == 0.\n"
    "When G % N == 0 the hierarchical policy packs groups onto nodes first (then\n"
    "D % N == 0 is needed too); otherwise the global policy places over all GPUs.\n"
    "\n"
    "Prints one line of JSON per input, a list for a list:\n"
    "  {\"phy2log\": [[expert in each of the R slots] per layer],\n"
    "   \"log2phy\": [[[slots of each replica of the expert, -1 padded] per expert] per layer],\n"
    "   \"logcnt\": [[replica count of each expert] per layer]}\n"
    "Slot p lives on GPU p / (R / D).\n"
    "\n"
    "Exit status: 0 on success, 1 for a bad input file, 2 for bad usage.\n";

/* pikv eplb --input FILE.json: print the EPLB placement of each problem in FILE. */
int cmd_eplb(int argc, char **argv)
{
    const char *input = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(eplb_usage, stdout);
            return 0;
        } else if (strcmp(arg, "--input") == 0) {
            if (i + 1 == argc) {
                fprintf(stderr, "pikv eplb: --input needs a file name\n");
                return 2;
            }
            input = argv[++i];
        } else if (strncmp(arg, "--input=", 8) == 0) {
            input = arg + 8;
        } else if (arg[0] == '-') {
            fprintf(stderr, "pikv eplb: unknown option '%s'\n", arg);
            return 2;
        } else {
            fprintf(stderr, "pikv eplb: unexpected argument '%s' (use --input FILE.json)\n",
                    arg);
            return 2;
        }
    }
    if (!input || !*input) {
        fprintf(stderr, "pikv eplb: missing --input FILE.json (see pikv eplb --help)\n");
        return 2;
    }

    size_t len = 0;
    char *text = pk_read_file(input, PK_MAX_JSON_BYTES, &len);
    if (!text) {
        fprintf(stderr, "pikv eplb: %s\n", pikv_last_error());
        return 1;
    }
    char *result = pk_eplb_json(text, len);
    pk_free(text);
    if (!result) {
        fprintf(stderr, "pikv eplb: %s: %s\n", input, pikv_last_error());
        return 1;
    }
    int written = puts(result) >= 0 && fflush(stdout) == 0;
    pk_free(result);
    if (!written) {
        fprintf(stderr, "pikv eplb: writing the result: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
