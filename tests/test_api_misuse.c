/* The public API as a careless caller uses it: every function of pikv.h called
 * with NULL pointers, indices outside the model and counts at the limits of int.
 * Each call must return its documented error value with a message and must not
 * crash or read out of bounds (this program runs under ASan in make test-asan). */
#include "check.h"
#include "pikv.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

/* The call returned an error (rc) and left a message naming something. */
#define EXPECT_ERR(failed, label)                                                                          \
    do {                                                                                                   \
        pikv_clear_error();                                                                                \
        int failed_ = (failed);                                                                            \
        CHECK(failed_ && strcmp(pikv_last_error(), "unknown error") != 0, "%s: %s", label,               \
              failed_ ? "no message" : "accepted");                                                        \
    } while (0)

static void check_without_objects(void)
{
    int32_t id = 0, *ids = NULL;
    size_t n = 0;
    float logits[4] = {0};
    uint64_t rng = 1;
    pikv_sampling greedy = {.greedy = 1};
    pikv_generation gen;
    pikv_qa_result res = {0};
    pikv_qa_request rq = {.context = &id, .n_context = 1};
    pikv_routing_stats rs;

    EXPECT_ERR(pikv_model_load(NULL) == NULL, "model_load(NULL)");
    EXPECT_ERR(pikv_model_config(NULL) == NULL, "model_config(NULL)");
    EXPECT_ERR(pikv_tokenizer_load(NULL) == NULL, "tokenizer_load(NULL)");
    EXPECT_ERR(pikv_tokenizer_vocab_size(NULL) == -1, "tokenizer_vocab_size(NULL)");
    EXPECT_ERR(pikv_tokenize(NULL, "a", 1, &ids, &n) == -1, "tokenize(NULL tokenizer)");
    EXPECT_ERR(pikv_detokenize(NULL, &id, 1, &n) == NULL, "detokenize(NULL tokenizer)");
    EXPECT_ERR(pikv_session_new(NULL, 1) == NULL, "session_new(NULL)");
    EXPECT_ERR(pikv_forward(NULL, &id, 1, logits, 0) == -1, "forward(NULL session)");
    EXPECT_ERR(pikv_prefill(NULL, &id, 1, NULL, logits) == -1, "prefill(NULL session)");
    EXPECT_ERR(pikv_session_model(NULL) == NULL, "session_model(NULL)");
    EXPECT_ERR(pikv_session_set_workers(NULL, 2, 1) == -1, "set_workers(NULL)");
    EXPECT_ERR(pikv_session_worker_imbalance(NULL) == -1.0, "worker_imbalance(NULL)");
    EXPECT_ERR(pikv_session_threads(NULL) == -1, "session_threads(NULL)");
    EXPECT_ERR(pikv_session_position(NULL) == -1, "session_position(NULL)");
    EXPECT_ERR(pikv_session_kv_bytes(NULL) == 0, "kv_bytes(NULL)");
    EXPECT_ERR(pikv_session_kv_types(NULL, NULL, NULL) == -1, "kv_types(NULL)");
    EXPECT_ERR(pikv_session_kv_len(NULL, 0, 0) == -1, "kv_len(NULL)");
    EXPECT_ERR(pikv_session_kv_read(NULL, 0, 0, 0, logits, 1) == -1, "kv_read(NULL)");
    EXPECT_ERR(pikv_session_mark(NULL) == -1, "mark(NULL)");
    EXPECT_ERR(pikv_session_rewind(NULL) == -1, "rewind(NULL)");
    EXPECT_ERR(pikv_sample(NULL, 4, &greedy, &rng) == -1, "sample(NULL logits)");
    EXPECT_ERR(pikv_sample(logits, 4, NULL, &rng) == -1, "sample(NULL sampling)");
    pikv_sampling sampled = {.temperature = 1.f, .top_p = 1.f};
    EXPECT_ERR(pikv_sample(logits, 4, &sampled, NULL) == -1, "sample(NULL rng, not greedy)");
    CHECK(pikv_sample(logits, 4, &greedy, NULL) == 0, "greedy sampling needs no rng");
    EXPECT_ERR(pikv_sample(logits, 0, &greedy, &rng) == -1, "sample(vocab 0)");
    EXPECT_ERR(pikv_generate(NULL, &id, 1, 1, &greedy, -1, &gen) == -1, "generate(NULL session)");
    EXPECT_ERR(pikv_generate_from(NULL, logits, 1, &greedy, -1, &gen) == -1, "generate_from(NULL session)");
    EXPECT_ERR(pikv_press_new(NULL, NULL, NULL) == NULL, "press_new(NULL)");
    EXPECT_ERR(pikv_press_name(NULL) == NULL, "press_name(NULL)");
    EXPECT_ERR(pikv_press_ratio(NULL) == -1.0, "press_ratio(NULL)");
    EXPECT_ERR(pikv_press_acts_while_generating(NULL) == -1, "press_acts_while_generating(NULL)");
    EXPECT_ERR(pikv_press_routing_stats(NULL, &rs, 0) == -1, "routing_stats(NULL press)");
    EXPECT_ERR(pikv_answer(NULL, NULL, &rq, &res) == -1, "answer(NULL session)");

    /* The documented no-ops: releasing NULL, and outputs of NULL objects zeroed. */
    pikv_free(NULL);
    pikv_model_free(NULL);
    pikv_tokenizer_free(NULL);
    pikv_session_free(NULL);
    pikv_press_free(NULL);
    pikv_qa_result_free(NULL);
    pikv_session_reset(NULL);
    pikv_model_get_info(NULL, NULL);
    pikv_session_press_stats(NULL, NULL);
    pikv_model_info info;
    memset(&info, 0x5a, sizeof info);
    pikv_model_get_info(NULL, &info);
    CHECK(info.n_params == 0 && info.dir[0] == '\0', "model_get_info(NULL) zeroes its output");
    pikv_press_stats st;
    memset(&st, 0x5a, sizeof st);
    pikv_session_press_stats(NULL, &st);
    CHECK(st.kv_bytes_before == 0 && st.compression_s == 0, "press_stats(NULL) zeroes its output");
}

/* A real model, session, tokenizer and press, with NULL outputs and bad indices. */
static void check_with_objects(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fixtures/tiny-gpt2", shared_dir());
    pikv_model *m = pikv_model_load(dir);
    pikv_tokenizer *tok = pikv_tokenizer_load(dir);
    CHECK(m && tok, "load %s: %s", dir, pikv_last_error());
    if (!m || !tok) {
        pikv_model_free(m);
        pikv_tokenizer_free(tok);
        return;
    }
    const pikv_config *c = pikv_model_config(m);
    pikv_session *s = pikv_session_new(m, 1);
    pikv_press *press = pikv_press_new("knorm:0.5", m, dir);
    CHECK(s && press, "session and press: %s", pikv_last_error());
    if (!s || !press) goto done;
    EXPECT_ERR(pikv_session_new(m, INT_MAX) == NULL, "session_new(INT_MAX threads)");

    int32_t ids[4] = {15496, 11, 616, 3290}, *out_ids = NULL;
    size_t n = 0;
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    float rows[64 * 64];
    CHECK(pikv_forward(s, ids, 4, logits, 0) == 0, "a valid forward: %s", pikv_last_error());

    /* Indices outside the cache: kv_len used to read past the head array. */
    EXPECT_ERR(pikv_session_kv_len(s, 99, 0) == -1, "kv_len(layer 99)");
    EXPECT_ERR(pikv_session_kv_len(s, 0, 99) == -1, "kv_len(head 99)");
    EXPECT_ERR(pikv_session_kv_len(s, -1, 0) == -1, "kv_len(layer -1)");
    EXPECT_ERR(pikv_session_kv_len(s, c->n_layer, 0) == -1, "kv_len(layer n_layer)");
    CHECK(pikv_session_kv_len(s, c->n_layer - 1, c->n_head - 1) == 4, "kv_len of the last head: 4 entries");
    EXPECT_ERR(pikv_session_kv_read(s, 99, 0, 0, rows, 64) == -1, "kv_read(layer 99)");
    EXPECT_ERR(pikv_session_kv_read(s, 0, -5, 1, rows, 64) == -1, "kv_read(head -5)");
    EXPECT_ERR(pikv_session_kv_read(s, 0, 0, 0, NULL, 64) == -1, "kv_read(NULL out)");
    EXPECT_ERR(pikv_session_kv_read(s, 0, 0, 0, rows, 3) == -1, "kv_read(3 rows for 4)");

    /* Counts at the limits of int: these used to overflow before their checks. */
    EXPECT_ERR(pikv_forward(s, ids, INT_MAX, logits, 0) == -1, "forward(n = INT_MAX)");
    EXPECT_ERR(pikv_forward(s, ids, -1, logits, 0) == -1, "forward(n = -1)");
    EXPECT_ERR(pikv_forward(s, NULL, 1, logits, 0) == -1, "forward(NULL ids)");
    EXPECT_ERR(pikv_prefill(s, ids, INT_MAX, press, logits) == -1, "prefill(n = INT_MAX)");
    EXPECT_ERR(pikv_prefill(s, NULL, 1, press, logits) == -1, "prefill(NULL ids)");
    CHECK(pikv_session_position(s) == 4, "failed calls left the position at 4 (%d)", pikv_session_position(s));
    pikv_sampling greedy = {.greedy = 1};
    pikv_generation gen;
    EXPECT_ERR(pikv_generate(s, ids, 1, INT_MAX, &greedy, -1, &gen) == -1, "generate(INT_MAX new tokens)");
    EXPECT_ERR(pikv_generate(s, ids, INT_MAX, 1, &greedy, -1, &gen) == -1, "generate(INT_MAX prompt)");
    EXPECT_ERR(pikv_generate(s, NULL, 1, 1, &greedy, -1, &gen) == -1, "generate(NULL prompt)");
    EXPECT_ERR(pikv_generate(s, ids, 1, 1, NULL, -1, &gen) == -1, "generate(NULL sampling)");
    EXPECT_ERR(pikv_generate(s, ids, 1, 1, &greedy, -1, NULL) == -1, "generate(NULL output)");
    EXPECT_ERR(pikv_generate_with_params(s, ids, 1, NULL, &gen) == -1, "generate_with_params(NULL params)");
    EXPECT_ERR(pikv_generate_with_params(NULL, ids, 1, &(pikv_generation_params){.max_new_tokens = 1}, &gen) == -1,
               "generate_with_params(NULL session)");
    EXPECT_ERR(pikv_session_new_with_params(NULL, &(pikv_session_params){0}) == NULL, "session_new_with_params(NULL)");
    EXPECT_ERR(pikv_session_new_with_params(pikv_session_model(s), NULL) == NULL,
               "session_new_with_params(NULL params)");
    int32_t pos[8];
    EXPECT_ERR(pikv_session_kv_positions(s, 99, 0, pos, 8) == -1, "kv_positions(layer 99)");
    EXPECT_ERR(pikv_session_kv_positions(s, 0, 0, pos, 1) == -1, "kv_positions(too small)");
    EXPECT_ERR(pikv_session_kv_positions(NULL, 0, 0, pos, 8) == -1, "kv_positions(NULL session)");
    EXPECT_ERR(pikv_press_routes_queries(NULL) == -1, "routes_queries(NULL)");
    EXPECT_ERR(pikv_generate_from(s, logits, INT_MAX, &greedy, -1, &gen) == -1, "generate_from(INT_MAX)");
    EXPECT_ERR(pikv_generate_from(s, NULL, 1, &greedy, -1, &gen) == -1, "generate_from(NULL logits)");
    EXPECT_ERR(pikv_session_set_workers(s, -1, 0) == -1, "set_workers(-1)");
    EXPECT_ERR(pikv_session_set_workers(s, INT_MAX, 0) == -1, "set_workers(INT_MAX)");

    /* Tokenizer: NULL outputs and ids outside the vocabulary. */
    EXPECT_ERR(pikv_tokenize(tok, "a", 1, NULL, &n) == -1, "tokenize(NULL ids)");
    EXPECT_ERR(pikv_tokenize(tok, "a", 1, &out_ids, NULL) == -1, "tokenize(NULL n_ids)");
    EXPECT_ERR(pikv_tokenize(tok, NULL, 5, &out_ids, &n) == -1, "tokenize(NULL text)");
    int32_t bad[2] = {-1, INT32_MAX};
    EXPECT_ERR(pikv_detokenize(tok, bad, 1, &n) == NULL, "detokenize(-1)");
    EXPECT_ERR(pikv_detokenize(tok, bad + 1, 1, &n) == NULL, "detokenize(INT32_MAX)");
    EXPECT_ERR(pikv_detokenize(tok, NULL, 3, &n) == NULL, "detokenize(NULL ids)");

    /* Presses and the pipeline. */
    EXPECT_ERR(pikv_press_new("duo:0.5", NULL, dir) == NULL, "press_new(duo, NULL model)");
    EXPECT_ERR(pikv_press_new("decoding(knorm)", NULL, dir) == NULL, "press_new(decoding, NULL model)");
    EXPECT_ERR(pikv_press_new("per_layer(knorm):ratios=0.5", NULL, dir) == NULL, "press_new(per_layer, NULL model)");
    EXPECT_ERR(pikv_press_new("composed[knorm:0.2,duo:0.5]", NULL, dir) == NULL, "press_new(duo inside, NULL model)");
    pikv_routing_stats rs;
    EXPECT_ERR(pikv_press_routing_stats(press, NULL, 0) == -1, "routing_stats(NULL output)");
    EXPECT_ERR(pikv_press_routing_stats(press, &rs, 0) == -1, "routing_stats of a press that does not route");
    pikv_qa_result res = {0};
    pikv_qa_request rq = {.context = ids, .n_context = 4, .max_new_tokens = 1, .stop_id = -1};
    EXPECT_ERR(pikv_answer(s, press, NULL, &res) == -1, "answer(NULL request)");
    EXPECT_ERR(pikv_answer(s, press, &rq, NULL) == -1, "answer(NULL result)");
    rq.context = NULL;
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(NULL context)");
    rq.context = ids;
    rq.n_context = INT_MAX;
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(INT_MAX context)");
    rq.n_context = 4;
    rq.max_new_tokens = INT_MAX;
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(INT_MAX new tokens)");
    rq.max_new_tokens = 1;
    rq.n_questions = 1; /* with questions == NULL */
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(NULL questions)");
    rq.n_questions = -3;
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(n_questions -3)");
    const int32_t *qs[1] = {NULL};
    int nq[1] = {2};
    rq.questions = qs;
    rq.n_question = nq;
    rq.n_questions = 1;
    EXPECT_ERR(pikv_answer(s, press, &rq, &res) == -1, "answer(a NULL question)");
    pikv_qa_result_free(&res);
    free(logits);
done:
    pikv_press_free(press);
    pikv_session_free(s);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
}

/* A tokenizer with more ids than the model has embedding rows: the GPT-2
 * vocabulary plus one token with id 60000, beside a 50,257-row model. */
static void check_tokenizer_pairing(void)
{
    char src[512], dir[] = "/tmp/pikv-test-pairing-XXXXXX", path[600], cmd[1400];
    snprintf(src, sizeof src, "%s/fixtures/tiny-gpt2", shared_dir());
    if (!mkdtemp(dir)) return;
    snprintf(cmd, sizeof cmd, "cp %s/merges.txt %s/ && sed 's/}[[:space:]]*$/, \"zz-extra\": 60000}/' %s/vocab.json > %s/vocab.json",
             src, dir, src, dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    pikv_model *m = pikv_model_load(src);
    pikv_tokenizer *own = pikv_tokenizer_load(src), *big = pikv_tokenizer_load(dir);
    CHECK(m && own && big, "load: %s", pikv_last_error());
    if (m && own && big) {
        CHECK(pikv_tokenizer_vocab_size(big) == 60001, "the big tokenizer has 60,001 ids (%d)",
              pikv_tokenizer_vocab_size(big));
        CHECK(pikv_tokenizer_check_model(own, m) == 0, "the model's own tokenizer fits: %s", pikv_last_error());
        CHECK(pikv_tokenizer_check_model(big, m) == -1 && strstr(pikv_last_error(), "ids up to 60000") &&
                  strstr(pikv_last_error(), "vocab_size is 50257"),
              "a bigger tokenizer is refused: %s", pikv_last_error());
    }
    EXPECT_ERR(pikv_tokenizer_check_model(NULL, m) == -1, "tokenizer_check_model(NULL tokenizer)");
    EXPECT_ERR(pikv_tokenizer_check_model(own, NULL) == -1, "tokenizer_check_model(NULL model)");
    pikv_tokenizer_free(own);
    pikv_tokenizer_free(big);
    pikv_model_free(m);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    if (system(path)) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
    check_without_objects();
    check_with_objects();
    check_tokenizer_pairing();
    return check_done("api_misuse");
}
