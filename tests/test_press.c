/* Presses on the bundled model, end to end: exact budgets and really freed
 * bytes, ratio 0 changes nothing, attention over a compressed cache equals a
 * dense masked reference, a press really removes a needle, several questions
 * share one compressed context, decoding-time compression, and bad specs. */
#include "check.h"
#include "eval/tasks.h"
#include "engine/session.h"
#include "pikv.h"

#include <math.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"

static pikv_model *model;
static pikv_tokenizer *tok;
static pk_haystack haystack;

/* A real-text context of n tokens (a pass-key task's). */
static pk_task make_context(int n, double depth, uint64_t seed)
{
    pk_task t;
    if (pk_task_make(&haystack, PK_TASK_PASSKEY, 1, n, depth, seed, &t)) fprintf(stderr, "%s\n", pikv_last_error());
    return t;
}

static void check_budgets_and_bytes(const pk_task *t)
{
    const pikv_config *c = pikv_model_config(model);
    const size_t entry = 2 * (size_t)c->head_dim * sizeof(float) + sizeof(int32_t);
    const int L = t->n_context, cells = c->n_layer * c->n_head;
    const char *uniform[] = {"knorm:0.3", "streaming_llm:0.3", "snapkv:0.3", "tova:0.3", "observed_attention:0.3",
                             "expected_attention:0.3", "random:0.3", "keydiff:0.3"};
    pikv_session *s = pikv_session_new(model, 2);
    for (size_t i = 0; i < sizeof uniform / sizeof *uniform; i++) {
        pikv_press *p = pikv_press_new(uniform[i], model, MODEL);
        CHECK(p != NULL, "%s: %s", uniform[i], pikv_last_error());
        if (!p) continue;
        pikv_session_reset(s);
        CHECK(pikv_prefill(s, t->context, L, p, NULL) == 0, "%s: %s", uniform[i], pikv_last_error());
        const int kept = (int)(L * 0.7);
        int exact = 1;
        for (int l = 0; l < c->n_layer; l++)
            for (int h = 0; h < c->n_head; h++) exact &= pikv_session_kv_len(s, l, h) == kept;
        CHECK(exact, "%s: every head keeps floor(%d * 0.7) = %d entries", uniform[i], L, kept);
        pikv_press_stats st;
        pikv_session_press_stats(s, &st);
        CHECK(st.kv_bytes_before == (size_t)cells * (size_t)L * entry, "%s: bytes before %zu", uniform[i],
              st.kv_bytes_before);
        CHECK(pikv_session_kv_bytes(s) == (size_t)cells * (size_t)kept * entry && st.kv_bytes_after == pikv_session_kv_bytes(s),
              "%s: bytes after %zu, expected %zu", uniform[i], pikv_session_kv_bytes(s), (size_t)cells * kept * entry);
        pikv_press_free(p);
    }
    /* Head-adaptive budgets: ragged heads, the same total per layer. */
    pikv_press *ada = pikv_press_new("adakv(snapkv):0.3", model, MODEL);
    pikv_session_reset(s);
    CHECK(ada && pikv_prefill(s, t->context, L, ada, NULL) == 0, "adakv: %s", pikv_last_error());
    int totals_ok = 1, ragged = 0;
    for (int l = 0; l < c->n_layer; l++) {
        int total = 0;
        for (int h = 0; h < c->n_head; h++) {
            total += pikv_session_kv_len(s, l, h);
            ragged |= pikv_session_kv_len(s, l, h) != pikv_session_kv_len(s, l, 0);
        }
        totals_ok &= total == c->n_head * (int)(L * 0.7);
    }
    CHECK(totals_ok, "adakv keeps n_head * n_kept entries per layer");
    CHECK(ragged, "adakv gives heads different lengths on real text");
    pikv_press_free(ada);
    pikv_session_free(s);
}

/* With ratio 0 (or none) the logits are bit-identical to running with no press. */
static void check_ratio_zero(const pk_task *t)
{
    const int V = pikv_model_config(model)->vocab_size;
    float *ref = malloc((size_t)V * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
    pikv_session *s = pikv_session_new(model, 2);
    pikv_forward(s, t->context, t->n_context, NULL, 0);
    pikv_forward(s, t->question, t->n_question, ref, 0);
    const char *specs[] = {"none", "knorm:0", "snapkv:0", "adakv(expected_attention):0", "composed[knorm:0,tova:0]"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        pikv_press *p = pikv_press_new(specs[i], model, MODEL);
        pikv_session_reset(s);
        pikv_prefill(s, t->context, t->n_context, p, NULL);
        pikv_forward(s, t->question, t->n_question, got, 0);
        CHECK(memcmp(ref, got, (size_t)V * sizeof(float)) == 0, "%s: logits differ from no press", specs[i]);
        pikv_press_free(p);
    }
    pikv_session_free(s);
    free(ref);
    free(got);
}

/* Attention of a new token over a compressed cache must equal dense attention
 * over the full cache with the dropped entries masked out. Checked on the last
 * layer, whose context keys and values do not depend on compression (each
 * layer is compressed only after its own prefill attention). */
static void check_masked_reference(const pk_task *t, const char *spec)
{
    const pikv_config *c = pikv_model_config(model);
    const int hd = c->head_dim, C = c->n_embd, last = c->n_layer - 1, L = t->n_context;
    pikv_session *full = pikv_session_new(model, 2), *comp = pikv_session_new(model, 2);
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    pikv_forward(full, t->context, L, NULL, 0);
    pikv_prefill(comp, t->context, L, p, NULL);
    pikv_forward(comp, t->question, 1, NULL, 0); /* one new token through the compressed cache */
    float *Kf = malloc((size_t)L * hd * sizeof(float)), *Vf = malloc((size_t)L * hd * sizeof(float));
    double worst = 0;
    for (int h = 0; h < c->n_head; h++) {
        pikv_session_kv_read(full, last, h, 0, Kf, L);
        pikv_session_kv_read(full, last, h, 1, Vf, L);
        const pk_kv_head *kh = pk_kv_head_at(&comp->fwd.kv, last, h);
        const float *q = comp->fwd.qkv + (size_t)h * hd;                 /* the new token's query */
        const float *k_new = comp->fwd.qkv + C + (size_t)h * hd, *v_new = comp->fwd.qkv + 2 * C + (size_t)h * hd;
        /* Dense scores over every context position; mask those the press dropped. */
        double *w = calloc((size_t)L + 1, sizeof *w), max = -INFINITY, sum = 0;
        char *kept = calloc((size_t)L, 1);
        for (int j = 0; j < kh->len - 1; j++) kept[kh->pos[j]] = 1;
        for (int j = 0; j <= L; j++) {
            const float *k = j < L ? Kf + (size_t)j * hd : k_new;
            if (j < L && !kept[j]) { w[j] = -INFINITY; continue; }
            double dot = 0;
            for (int d = 0; d < hd; d++) dot += (double)q[d] * k[d];
            w[j] = dot / sqrt(hd);
            max = fmax(max, w[j]);
        }
        for (int j = 0; j <= L; j++) sum += w[j] == -INFINITY ? 0 : exp(w[j] - max);
        for (int d = 0; d < hd; d++) {
            double out = 0;
            for (int j = 0; j <= L; j++)
                if (w[j] != -INFINITY) out += exp(w[j] - max) / sum * (j < L ? Vf[(size_t)j * hd + d] : v_new[d]);
            worst = fmax(worst, fabs(out - comp->fwd.att[(size_t)h * hd + d]));
        }
        free(w);
        free(kept);
    }
    CHECK(worst < 1e-5, "%s: attention over the compressed cache vs masked dense reference: %.3g", spec, worst);
    free(Kf);
    free(Vf);
    pikv_press_free(p);
    pikv_session_free(full);
    pikv_session_free(comp);
}

/* Answer one question against a context, with a press; returns whether the answer is right. */
static int answer_task(pikv_session *s, pikv_press *p, const pk_task *t, int query_aware)
{
    const int32_t *q = t->question;
    pikv_qa_request rq = {.context = t->context, .n_context = t->n_context, .questions = &q,
                          .n_question = &t->n_question, .n_questions = 1, .max_new_tokens = 10, .stop_id = 0,
                          .query_aware = query_aware};
    pikv_qa_result r;
    if (pikv_answer(s, p, &rq, &r)) return -1;
    int ok = pk_task_correct(tok, t, r.answers[0], r.n_answer[0]);
    pikv_qa_result_free(&r);
    return ok;
}

/* streaming_llm keeps the sinks and the recent half: a needle in between is
 * gone from every head, and so is the answer. */
static void check_needle_removed(void)
{
    pk_task t = make_context(800, 0.3, 11);
    pikv_session *s = pikv_session_new(model, 2);
    CHECK(answer_task(s, NULL, &t, 0) == 1, "no compression answers the pass key");
    pikv_press *p = pikv_press_new("streaming_llm:0.5", model, MODEL);
    CHECK(answer_task(s, p, &t, 0) == 0, "streaming_llm without the needle must not answer it");
    /* The cache after the answer still shows which positions survived. */
    pikv_session_reset(s);
    pikv_prefill(s, t.context, t.n_context, p, NULL);
    int found = 0;
    const pikv_config *c = pikv_model_config(model);
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_kv_head *kh = pk_kv_head_at(&s->fwd.kv, l, h);
            for (int j = 0; j < kh->len; j++)
                found += kh->pos[j] >= t.needle_start && kh->pos[j] < t.needle_start + t.needle_len;
        }
    CHECK(found == 0, "needle entries left in the cache: %d", found);
    pikv_press_free(p);
    pk_task_free(&t);
    pikv_session_free(s);
}

/* Several questions on one compressed context: each answer equals the answer
 * to that question alone, and the cache returns to its compressed size. */
static void check_questions_share_context(void)
{
    pk_task t = make_context(700, 0.5, 5);
    const char *texts[] = {" What is the pass key? The pass key is", " The text above is about"};
    int32_t *q[2];
    int nq[2];
    for (int i = 0; i < 2; i++) {
        size_t n;
        pikv_tokenize(tok, texts[i], strlen(texts[i]), &q[i], &n);
        nq[i] = (int)n;
    }
    pikv_press *p = pikv_press_new("snapkv:0.4", model, MODEL);
    pikv_session *s = pikv_session_new(model, 2);
    pikv_qa_request both = {.context = t.context, .n_context = t.n_context, .questions = (const int32_t *const *)q,
                            .n_question = nq, .n_questions = 2, .max_new_tokens = 8, .stop_id = -1};
    pikv_qa_result r2, r1;
    CHECK(pikv_answer(s, p, &both, &r2) == 0, "two questions: %s", pikv_last_error());
    pikv_qa_request second = both;
    second.questions = (const int32_t *const *)&q[1];
    second.n_question = &nq[1];
    second.n_questions = 1;
    CHECK(pikv_answer(s, p, &second, &r1) == 0, "one question: %s", pikv_last_error());
    CHECK(r2.n_answer[1] == r1.n_answer[0] && memcmp(r2.answers[1], r1.answers[0], (size_t)r1.n_answer[0] * 4) == 0,
          "the second answer equals the answer to that question alone");
    CHECK(r2.kv_bytes_after < r2.kv_bytes_before, "snapkv:0.4 shrank the cache");

    /* Rewind by hand: the cache goes back to the compressed bytes exactly. */
    pikv_session_reset(s);
    pikv_prefill(s, t.context, t.n_context, p, NULL);
    size_t compressed = pikv_session_kv_bytes(s);
    pikv_session_mark(s);
    pikv_forward(s, q[0], nq[0], NULL, 0);
    CHECK(pikv_session_kv_bytes(s) > compressed, "the question grows the cache");
    CHECK(pikv_session_rewind(s) == 0 && pikv_session_kv_bytes(s) == compressed &&
              pikv_session_position(s) == t.n_context,
          "rewind returns to %zu bytes, got %zu", compressed, pikv_session_kv_bytes(s));
    pikv_qa_result_free(&r1);
    pikv_qa_result_free(&r2);
    for (int i = 0; i < 2; i++) pikv_free(q[i]);
    pikv_press_free(p);
    pikv_session_free(s);
    pk_task_free(&t);
}

/* decoding(knorm): every 8 generated tokens each head is cut back to 300. */
static void check_decoding_press(void)
{
    pk_task t = make_context(500, 0.5, 3);
    pikv_press *p = pikv_press_new("decoding(knorm):every=8,target=300", model, MODEL);
    CHECK(p && pikv_press_acts_while_generating(p), "decoding press: %s", pikv_last_error());
    pikv_session *s = pikv_session_new(model, 2);
    const pikv_config *c = pikv_model_config(model);
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    pikv_prefill(s, t.context, t.n_context, p, logits);
    CHECK(pikv_session_kv_len(s, 0, 0) == 500, "the prompt is not compressed: %d", pikv_session_kv_len(s, 0, 0));
    pikv_sampling greedy = {.greedy = 1};
    pikv_generation g;
    CHECK(pikv_generate_from(s, logits, 41, &greedy, -1, &g) == 0, "generate: %s", pikv_last_error());
    int max_len = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++)
            max_len = pikv_session_kv_len(s, l, h) > max_len ? pikv_session_kv_len(s, l, h) : max_len;
    /* 40 decode steps: cut at steps 8, 16, 24, 32, 40 -> exactly 300 after the last. */
    CHECK(max_len == 300, "after 40 decode steps every head holds 300 entries, max %d", max_len);
    pikv_free(g.ids);
    free(logits);
    pikv_session_free(s);
    pikv_press_free(p);
    pk_task_free(&t);
}

static void expect_bad_spec(const char *spec, const char *needle)
{
    pikv_press *p = pikv_press_new(spec, model, MODEL);
    CHECK(!p && strstr(pikv_last_error(), needle), "spec '%s': expected error with '%s', got %s", spec, needle,
          p ? "a press" : pikv_last_error());
    pikv_press_free(p);
}

static void check_bad_specs(const pk_task *t)
{
    expect_bad_spec("frobnicate:0.5", "unknown press 'frobnicate'");
    expect_bad_spec("knorm:1", "out of range [0, 1)");
    expect_bad_spec("knorm:-0.1", "out of range [0, 1)");
    expect_bad_spec("knorm:abc", "ratio=abc");
    expect_bad_spec("knorm:0.5,window=3", "unknown parameter 'window'");
    expect_bad_spec("snapkv:0.5,kernel=4", "must be odd");
    expect_bad_spec("adakv:0.5", "wraps one scorer press");
    expect_bad_spec("adakv(knorm:0.3):0.5", "give the ratio to adakv");
    expect_bad_spec("adakv(composed[knorm]):0.5", "needs a scorer inside");
    expect_bad_spec("per_layer(knorm):ratios=0.1/0.2", "6 layers");
    expect_bad_spec("per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/1.5", "entry 6");
    expect_bad_spec("composed[knorm:0.2,decoding(knorm):every=4,target=10]", "cannot be composed");
    expect_bad_spec("composed[knorm:0.2,", "position 19");
    expect_bad_spec("none:0.5", "takes no parameters");
    expect_bad_spec("knorm(snapkv):0.5", "takes no inner press");
    /* Combinations that only fail on real data fail with a message, not a crash. */
    pikv_press *p = pikv_press_new("composed[adakv(knorm):0.5,tova:0.3]", model, MODEL);
    pikv_session *s = pikv_session_new(model, 2);
    CHECK(p && pikv_prefill(s, t->context, t->n_context, p, NULL) != 0 &&
              strstr(pikv_last_error(), "different positions"),
          "tova after a head-wise press: %s", pikv_last_error());
    pikv_press_free(p);
    pikv_session_free(s);
}

/* Capabilities inside a composition: each either runs there or is refused
 * with a message naming it; eplb_duo is a composition object of its two
 * presses; a press made for another model is refused by the session. */
static void check_capabilities(const pk_task *t)
{
    expect_bad_spec("composed[knorm:0.2,duo:ratio=0.5,prefill_chunk=256]", "prefill_chunk cannot be composed");
    expect_bad_spec("composed[duo:ratio=0.5,prefill_chunk=64]", "prefill_chunk cannot be composed");
    expect_bad_spec("composed[knorm:0.2,decoding(knorm):every=4,target=10]", "acts while generating");
    expect_bad_spec("composed[moe_router:ratio=0.3,route=1]", "route=1 cannot be composed");
    expect_bad_spec("composed[snapkv:0.3,kvzip:0.5]", "gone when kvzip decides");
    expect_bad_spec("composed[kvzip:0.5,expected_attention:0.3]", "gone when kvzip decides");
    pikv_press *dk = pikv_press_new("composed[duo:ratio=0.5,knorm:0.1,kvzip:0.5]", model, MODEL);
    CHECK(dk && (dk->caps & PK_PRESS_RECONSTRUCTION_SCORES), "kvzip composes with query-free presses: %s",
          pikv_last_error());
    pikv_press_free(dk);
    pikv_press *chunked = pikv_press_new("duo:ratio=0.5,prefill_chunk=256", model, MODEL);
    CHECK(chunked && (chunked->caps & PK_PRESS_CHUNKED_PREFILL) && chunked->prefill_chunk == 256,
          "duo with prefill_chunk declares a chunked prefill");
    pikv_press_free(chunked);

    /* A composition inside a composition runs its parts in order too: the same
     * entries as the flat composition. */
    pikv_press *flat = pikv_press_new("composed[knorm:0.2,streaming_llm:0.3,snapkv:0.2]", model, MODEL);
    pikv_press *nested = pikv_press_new("composed[composed[knorm:0.2,streaming_llm:0.3],snapkv:0.2]", model, MODEL);
    pikv_session *a = pikv_session_new(model, 2), *b = pikv_session_new(model, 2);
    CHECK(flat && nested && (nested->caps & PK_PRESS_SEQUENCE), "compositions build");
    pikv_prefill(a, t->context, t->n_context, flat, NULL);
    pikv_prefill(b, t->context, t->n_context, nested, NULL);
    int same = pikv_session_kv_bytes(a) == pikv_session_kv_bytes(b) && pikv_session_kv_bytes(a) > 0;
    int32_t pa[2048], pb[2048];
    for (int l = 0; same && l < pikv_model_config(model)->n_layer; l++)
        for (int h = 0; same && h < pikv_model_config(model)->n_head; h++) {
            int na = pikv_session_kv_positions(a, l, h, pa, 2048), nb = pikv_session_kv_positions(b, l, h, pb, 2048);
            same = na == nb && na > 0 && memcmp(pa, pb, (size_t)na * sizeof *pa) == 0;
        }
    CHECK(same, "nested composition keeps what the flat one keeps");
    pikv_press_free(flat);
    pikv_press_free(nested);

    pikv_press *ed = pikv_press_new("eplb_duo:ratio=0.5,eplb_share=0.7", model, MODEL);
    CHECK(ed && (ed->caps & PK_PRESS_SEQUENCE) && ed->n_inner == 2 && strcmp(ed->inner[0]->name, "moe_router") == 0 &&
              strcmp(ed->inner[1]->name, "duo") == 0 && fabs(ed->inner[0]->ratio - 0.35) < 1e-12 &&
              fabs(ed->inner[1]->ratio - 0.15) < 1e-12 && strcmp(ed->name, "eplb_duo") == 0,
          "eplb_duo is moe_router 0.35 then duo 0.15");
    pikv_press_free(ed);

    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s/fixtures/tiny-gpt2", shared_dir());
    pikv_model *other = pikv_model_load(tiny);
    pikv_press *knorm = pikv_press_new("knorm:0.5", model, MODEL);
    pikv_session *s = other ? pikv_session_new(other, 1) : NULL;
    const int32_t ids[4] = {1, 2, 3, 4};
    CHECK(s && knorm && pikv_prefill(s, ids, 4, knorm, NULL) != 0 && strstr(pikv_last_error(), "was made for a model"),
          "a press of another model is refused: %s", pikv_last_error());
    pikv_session_free(s);
    pikv_press_free(knorm);
    pikv_model_free(other);
    pikv_session_free(a);
    pikv_session_free(b);
}

int main(void)
{
    model = pikv_model_load(MODEL);
    tok = pikv_tokenizer_load(MODEL);
    if (!model || !tok || pk_haystack_load(&haystack, tok, "data/haystack.txt")) {
        fprintf(stderr, "setup: %s\n", pikv_last_error());
        return 1;
    }
    pk_task t = make_context(600, 0.5, 1);
    check_budgets_and_bytes(&t);
    check_ratio_zero(&t);
    const char *masked[] = {"knorm:0.5", "snapkv:0.6", "adakv(expected_attention):0.5", "pyramidkv:0.5",
                            "chunkkv(keydiff):0.4", "composed[knorm:0.3,streaming_llm:0.3]"};
    for (size_t i = 0; i < sizeof masked / sizeof *masked; i++) check_masked_reference(&t, masked[i]);
    check_needle_removed();
    check_questions_share_context();
    check_decoding_press();
    check_bad_specs(&t);
    check_capabilities(&t);
    pk_task_free(&t);
    pk_haystack_free(&haystack);
    pikv_tokenizer_free(tok);
    pikv_model_free(model);
    return check_done("press");
}
