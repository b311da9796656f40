/* A program that uses pikv the way an outside project does: only <pikv.h> and
 * what `pkg-config --cflags --libs pikv` gives (tests/install.sh builds it
 * against an installed prefix). It answers one question about a context file
 * with a press and prints the answer's ids, its text and the KV bytes, to be
 * compared with `pikv generate --json` on the same inputs.
 *
 *   install_answer MODEL_DIR CONTEXT_FILE QUESTION PRESS */
#include <pikv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file as a NUL-terminated string, or NULL. */
static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1))) {
            *len = fread(text, 1, (size_t)n, f);
            text[*len] = '\0';
        }
    }
    fclose(f);
    return text;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR CONTEXT_FILE QUESTION PRESS\n", argv[0]);
        return 2;
    }
    size_t len = 0;
    char *context = read_text(argv[2], &len);
    if (!context) {
        fprintf(stderr, "%s: cannot read\n", argv[2]);
        return 1;
    }
    int rc = 1;
    pikv_model *m = pikv_model_load(argv[1]);
    pikv_tokenizer *tok = m ? pikv_tokenizer_load(argv[1]) : NULL;
    pikv_press *press = tok ? pikv_press_new(argv[4], m, argv[1]) : NULL;
    pikv_session *s = press ? pikv_session_new(m, 1) : NULL;
    int32_t *ctx = NULL, *q = NULL;
    size_t n_ctx = 0, n_q = 0;
    pikv_qa_result r = {0};
    if (!s || pikv_tokenize(tok, context, len, &ctx, &n_ctx) || pikv_tokenize(tok, argv[3], strlen(argv[3]), &q, &n_q))
        goto done;
    const int n_question = (int)n_q;
    const int32_t *questions[] = {q};
    pikv_qa_request rq = {.context = ctx, .n_context = (int)n_ctx, .questions = questions,
                          .n_question = &n_question, .n_questions = 1, .max_new_tokens = 12,
                          .stop_id = pikv_model_config(m)->eos_token_id};
    if (pikv_answer(s, press, &rq, &r)) goto done;
    char *answer = pikv_detokenize(tok, r.answers[0], (size_t)r.n_answer[0], NULL);
    if (!answer) goto done;
    printf("ids");
    for (int i = 0; i < r.n_answer[0]; i++) printf(" %d", r.answers[0][i]);
    printf("\ntext %s\nkv_bytes_before %zu\nkv_bytes_after %zu\n", answer, r.kv_bytes_before, r.kv_bytes_after);
    pikv_free(answer);
    rc = 0;
done:
    if (rc) fprintf(stderr, "%s\n", pikv_last_error());
    pikv_qa_result_free(&r);
    pikv_free(q);
    pikv_free(ctx);
    pikv_session_free(s);
    pikv_press_free(press);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
    free(context);
    return rc;
}
