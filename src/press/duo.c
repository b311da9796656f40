/* duo: DuoAttention (Xiao et al., 2024). Some heads (retrieval heads) need the
 * whole context; the others (streaming heads) only look at the first tokens
 * (attention sinks) and a recent window. Retrieval heads keep their full cache;
 * streaming heads keep only sink + recent entries, after the prefill and while
 * decoding, where their window rolls in place (a ring, see kv/kvcache.h).
 *
 * `ratio` is the fraction of all heads, over all layers, that stream; which
 * heads stream comes from a pattern (duo_pattern.h): the lowest gate values.
 * With prefill_chunk=N the prompt is prefilled N tokens at a time and the
 * streaming heads hold sink + recent (+ the chunk) throughout, bounding prefill
 * memory; by default the prefill sees the full cache and compression follows
 * (kvpress's behaviour). */
#include "press/duo_pattern.h"
#include "press/press.h"
#include "press/spec.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    int n_layer, n_head;
    int sink, recent;
    unsigned char *streaming;   /* [n_layer * n_head] */
} duo_params;

/* This layer's streaming heads stream; the others keep everything. The
 * decision does not depend on the entries, so for a chunked prefill the engine
 * applies it to the empty cache first, and the streaming heads never hold more
 * than sink + recent + one chunk. */
static int duo_select(pk_press *p, const pk_press_view *v, pk_keep_set *out)
{
    const duo_params *dp = p->params;
    for (int h = 0; h < dp->n_head; h++)
        if (dp->streaming[v->layer * dp->n_head + h]) out->stream[h] = (pk_stream_shape){dp->sink, dp->recent};
    return 0;
}

static void duo_destroy(pk_press *p) { pk_free(((duo_params *)p->params)->streaming); }

static const pk_press_ops duo_ops = {
    .select = duo_select, .destroy = duo_destroy};

int pk_build_duo(const pk_spec *spec, const pk_press_env *env, pk_press **out)
{
    static const char *const keys[] = {"ratio", "sink", "recent", "pattern", "prefill_chunk", NULL};
    if (!env->model) return pk_fail("press 'duo' needs a model (pikv_press_new's model is NULL)");
    const pikv_config *c = pikv_model_config(env->model);
    double ratio;
    if (spec->n_children) return pk_fail("press 'duo' takes no inner press");
    if (pk_spec_check_keys(spec, keys) || pk_press_ratio_param(spec, 0.5, &ratio)) return -1;

    /* The pattern: pattern=DIR, else the model's own duo/ directory. */
    char dir[1024];
    const char *given = pk_spec_get(spec, "pattern");
    if (given) snprintf(dir, sizeof dir, "%s", given);
    else if (!env->model_dir || pk_join_path(dir, sizeof dir, env->model_dir, "duo/full_attention_heads.tsv") ||
             !pk_path_exists(dir))
        return pk_fail("press 'duo': no head pattern for the model in '%s': give pattern=DIR, or make one with "
                       "`pikv duo-calibrate --model %s`",
                       env->model_dir ? env->model_dir : "?", env->model_dir ? env->model_dir : "DIR");
    else
        snprintf(dir, sizeof dir, "%s/duo", env->model_dir);
    pk_duo_pattern pattern;
    if (pk_duo_pattern_load(dir, &pattern)) return pk_fail_prefix("press 'duo'");
    int rc = -1;
    if (pattern.n_layer != c->n_layer || pattern.n_head != c->n_head) {
        pk_fail("press 'duo': pattern %s/full_attention_heads.tsv is %d layers x %d heads, the model %d x %d", dir,
                pattern.n_layer, pattern.n_head, c->n_layer, c->n_head);
        goto done;
    }
    int sink, recent, chunk;
    if (pk_spec_int(spec, "sink", pattern.sink, 0, c->n_positions, &sink) ||
        pk_spec_int(spec, "recent", pattern.recent, 1, c->n_positions, &recent) ||
        pk_spec_int(spec, "prefill_chunk", 0, 0, c->n_positions, &chunk))
        goto done;
    if (pk_press_new("duo", &duo_ops, ratio, sizeof(duo_params), out)) goto done;
    (*out)->caps = PK_PRESS_QUERY_FREE | PK_PRESS_ENTRY_FREE | PK_PRESS_MEASURED | (chunk ? PK_PRESS_CHUNKED_PREFILL : 0);
    (*out)->prefill_chunk = chunk;
    duo_params *dp = (*out)->params;
    *dp = (duo_params){c->n_layer, c->n_head, sink, recent, NULL};
    dp->streaming = pk_malloc((size_t)c->n_layer * (size_t)c->n_head, "duo streaming heads");
    if (!dp->streaming || pk_duo_pattern_select(&pattern, ratio, dp->streaming)) {
        pk_press_destroy(*out);
        *out = NULL;
        goto done;
    }
    rc = 0;
done:
    pk_duo_pattern_free(&pattern);
    return rc;
}
