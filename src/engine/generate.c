/* Token selection and the generation loop. */
#include "engine/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <stdlib.h>

/* splitmix64: a small, well-mixed generator; the same seed gives the same text. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 bits, matching float precision. */
static float random_unit(uint64_t *state) { return (float)(next_random(state) >> 40) / 16777216.f; }

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct { float p; int id; } candidate;

static int by_probability(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int pikv_sample(float *logits, int vocab, const pikv_sampling *p, uint64_t *rng)
{
    if (!logits || !p || (!rng && !p->greedy)) return pk_fail("pikv_sample: logits, sampling or rng is NULL");
    if (vocab <= 0) return pk_fail("pikv_sample: vocab %d must be > 0", vocab);
    if (p->greedy) return argmax(logits, vocab);
    if (!(p->temperature > 0.f)) return pk_fail("sampling: temperature must be > 0");
    /* Softmax at the given temperature. */
    float max = logits[argmax(logits, vocab)], sum = 0.f;
    for (int i = 0; i < vocab; i++) sum += logits[i] = expf((logits[i] - max) / p->temperature);
    candidate *c = pk_malloc_array((size_t)vocab, sizeof *c, "sampling candidates");
    if (!c) return -1;
    for (int i = 0; i < vocab; i++) c[i] = (candidate){logits[i] / sum, i};
    qsort(c, (size_t)vocab, sizeof *c, by_probability);
    /* Keep the top_k most likely, then the smallest prefix whose mass reaches top_p. */
    int n = p->top_k > 0 && p->top_k < vocab ? p->top_k : vocab;
    float mass = 0.f, top_p = p->top_p > 0.f && p->top_p < 1.f ? p->top_p : 1.f;
    int kept = 0;
    while (kept < n) {
        mass += c[kept++].p;
        if (mass >= top_p) break;
    }
    float r = random_unit(rng) * mass, acc = 0.f;
    int id = c[kept - 1].id;
    for (int i = 0; i < kept; i++) {
        acc += c[i].p;
        if (r < acc) { id = c[i].id; break; }
    }
    pk_free(c);
    return id;
}

/* Greedy steps a device engine takes before the host looks for stop_id: a
 * chunk may run past it, and its followers are dropped. */
enum { DEVICE_GREEDY_CHUNK = 32 };

/* pikv_generate_from's greedy loop on a device engine: the first token from
 * logits, the rest chosen and fed to the next step on the device. */
static int device_greedy(pikv_session *s, float *logits, int max_new, int stop_id, pikv_generation *out)
{
    static const pikv_sampling greedy = {.greedy = 1};
    if (max_new == 0) return 0;
    out->ids[out->n_ids++] = pikv_sample(logits, s->model->cfg.vocab_size, &greedy, NULL);
    while (out->n_ids < max_new && out->ids[out->n_ids - 1] != stop_id) {
        const int left = max_new - out->n_ids, steps = left < DEVICE_GREEDY_CHUNK ? left : DEVICE_GREEDY_CHUNK;
        if (s->device.ops->greedy(s->device.engine, out->ids[out->n_ids - 1], steps, out->ids + out->n_ids))
            return -1;
        for (int i = 0; i < steps && out->ids[out->n_ids - 1] != stop_id; i++) out->n_ids++;
    }
    return 0;
}

int pikv_generate_from(pikv_session *s, float *logits, int max_new_tokens, const pikv_sampling *p, int stop_id,
                       pikv_generation *out)
{
    if (!s || !logits || !p || !out) return pk_fail("pikv_generate_from: session, logits, sampling or output is NULL");
    if (max_new_tokens > s->model->cfg.n_positions)
        return pk_fail("max_new_tokens %d exceeds the model's %d positions (n_positions)", max_new_tokens,
                       s->model->cfg.n_positions);
    const int V = s->model->cfg.vocab_size;
    out->ids = NULL;
    out->n_ids = 0;
    out->prefill_s = out->decode_s = 0;
    if (max_new_tokens < 0) return pk_fail("max_new_tokens must be >= 0");
    int limit = s->model->cfg.n_positions, pos = pikv_session_position(s);
    if (pos + max_new_tokens - 1 > limit)
        return pk_fail("%d tokens + %d new tokens exceed the model's %d positions (n_positions)", pos,
                       max_new_tokens, limit);
    if (!(out->ids = pk_malloc_array((size_t)max_new_tokens + 1, sizeof(int32_t), "generated ids"))) return -1;
    uint64_t rng = p->seed;
    double t0 = pikv_now();
    /* A press acting while decoding sees every step's queries on the host. */
    if (s->device.ops && p->greedy && !s->presses.attached) {
        if (device_greedy(s, logits, max_new_tokens, stop_id, out)) goto fail;
        out->decode_s = pikv_now() - t0;
        return 0;
    }
    for (int i = 0; i < max_new_tokens; i++) {
        int id = pikv_sample(logits, V, p, &rng);
        if (id < 0) goto fail;
        out->ids[out->n_ids++] = id;
        if (id == stop_id || i + 1 == max_new_tokens) break;
        if (pikv_forward(s, &out->ids[out->n_ids - 1], 1, logits, 0)) goto fail;
    }
    out->decode_s = pikv_now() - t0;
    return 0;
fail:
    pk_free(out->ids);
    out->ids = NULL;
    out->n_ids = 0;
    return -1;
}

int pikv_generate(pikv_session *s, const int32_t *prompt, int n_prompt, int max_new_tokens,
                  const pikv_sampling *p, int stop_id, pikv_generation *out)
{
    if (!s || !prompt || !p || !out) return pk_fail("pikv_generate: session, prompt, sampling or output is NULL");
    if (n_prompt <= 0 || max_new_tokens < 0) return pk_fail("pikv_generate: no prompt, or max_new_tokens < 0");
    if (n_prompt > s->model->cfg.n_positions || max_new_tokens > s->model->cfg.n_positions)
        return pk_fail("%d prompt tokens + %d new tokens exceed the model's %d positions (n_positions)", n_prompt,
                       max_new_tokens, s->model->cfg.n_positions);
    out->ids = NULL;
    out->n_ids = 0;
    const int pos = pikv_session_position(s);
    if (pos + n_prompt + max_new_tokens - 1 > s->model->cfg.n_positions)
        return pk_fail("%d prompt tokens + %d new tokens exceed the model's %d positions (n_positions)",
                       pos + n_prompt, max_new_tokens, s->model->cfg.n_positions);
    float *logits = pk_malloc_array((size_t)s->model->cfg.vocab_size, sizeof(float), "logits");
    if (!logits) return -1;
    double t0 = pikv_now();
    int rc = pikv_forward(s, prompt, n_prompt, logits, 0);
    double prefill_s = pikv_now() - t0;
    if (rc == 0) rc = pikv_generate_from(s, logits, max_new_tokens, p, stop_id, out);
    out->prefill_s = prefill_s;
    pk_free(logits);
    return rc;
}

pikv_generation_params pikv_generation_default_params(void)
{
    return (pikv_generation_params){.max_new_tokens = 32, .sampling = {.greedy = 1}, .stop_id = -1};
}

int pikv_generate_with_params(pikv_session *s, const int32_t *prompt, int n_prompt, const pikv_generation_params *p,
                              pikv_generation *out)
{
    if (!p) return pk_fail("pikv_generate_with_params: params is NULL");
    return pikv_generate(s, prompt, n_prompt, p->max_new_tokens, &p->sampling, p->stop_id, out);
}
