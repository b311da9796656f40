/* pikv tokenize: text on stdin to token ids on stdout. */
#include "cli/args.h"
#include "cli/commands.h"
#include "pikv.h"
#include "util/file.h"
#include "util/mem.h"

#include <stdio.h>

int cmd_tokenize(int argc, char **argv)
{
    const char *model_flag = NULL;
    const cli_opt opts[] = {
        {"--model", "-m", OPT_STRING, &model_flag, "model directory (default: the bundled model)", NULL},
    };
    const cli_command cmd = {"tokenize", "tokenize [--model DIR] < text",
                             "Prints the token ids of the text read on stdin, space-separated on one line.", opts,
                             sizeof opts / sizeof *opts};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    pikv_tokenizer *tok = pikv_tokenizer_load(cli_model_dir(model_flag));
    if (!tok) return cli_fail(&cmd);
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    char *text = pk_read_stream(0, "stdin", PK_MAX_TEXT_BYTES, &len);
    rc = 1;
    if (!text) cli_fail(&cmd);
    else if (pikv_tokenize(tok, text, len, &ids, &n)) cli_error(&cmd, "stdin: %s", pikv_last_error());
    else {
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
        rc = 0;
    }
    pikv_free(ids);
    pikv_free(text);
    pikv_tokenizer_free(tok);
    return rc;
}
