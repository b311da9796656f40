/* Prefill with a press that scores the context by reconstruction (kvzip,
 * PK_PRESS_RECONSTRUCTION_SCORES): the context is prefilled with the full
 * cache, then the model is asked to repeat it -- the press's prompt followed
 * by the context again, teacher-forced -- in chunks that continue the copy
 * while it fits after the context; the after_attention hook records, per
 * (layer, head, cached entry), the largest attention weight a query of the
 * repeated copy gives it. Then each layer is compressed with the press, which
 * reads those scores through its view. The press decides; the engine runs. */
#include "engine/compress.h"
#include "engine/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

int pk_recon_record_layer(pk_recon_record *rec, const pk_press_view *v)
{
    const int rows = v->n_q - rec->first_row;
    if (rows <= 0) return 0;
    for (int h = 0; h < v->cfg->n_head; h++) {
        const pk_kv_head *kh = pk_press_head(v, h);
        const size_t need = (size_t)rows * (size_t)kh->len;
        if (need > rec->cap_weights) {
            pk_free(rec->weights);
            rec->cap_weights = 0;
            if (!(rec->weights = pk_malloc_array(need, sizeof *rec->weights, "kvzip reconstruction"))) return -1;
            rec->cap_weights = need;
        }
        pk_query_attention(v, h, rec->first_row, rows, rec->weights);
        float *best = rec->scores[v->layer][h];
        for (int r = 0; r < rows; r++) {
            const float *w = rec->weights + (size_t)r * (size_t)kh->len;
            for (int j = 0; j < kh->len; j++) {
                const int pos = kh->pos[j];
                if (pos < rec->len && w[j] > best[pos]) best[pos] = w[j];
            }
        }
    }
    return 0;
}

/* Free scores[layer][head] of n_layer x n_head. */
static void free_scores(float ***scores, int n_layer, int n_head)
{
    if (!scores) return;
    for (int l = 0; l < n_layer; l++) {
        if (scores[l])
            for (int h = 0; h < n_head; h++) pk_free(scores[l][h]);
        pk_free(scores[l]);
    }
    pk_free(scores);
}

/* Zeroed scores[layer][head][len]. */
static float ***alloc_scores(int n_layer, int n_head, int len)
{
    float ***scores = pk_calloc((size_t)n_layer, sizeof *scores, "kvzip scores");
    for (int l = 0; scores && l < n_layer; l++) {
        if (!(scores[l] = pk_calloc((size_t)n_head, sizeof **scores, "kvzip scores"))) goto fail;
        for (int h = 0; h < n_head; h++)
            if (!(scores[l][h] = pk_calloc((size_t)len, sizeof ***scores, "kvzip scores"))) goto fail;
    }
    return scores;
fail:
    free_scores(scores, n_layer, n_head);
    return NULL;
}

/* Run the reconstruction of the n context tokens ids, which end at position
 * rec->len: the prompt, then the context again in chunks of recon_chunk
 * tokens, each continuing the copy the chunks before it began, so that the
 * scores do not depend on the chunk size. When the next chunk would pass
 * n_positions, the cache is rewound to the context (snap) and the copy starts
 * again with the prompt. */
static int reconstruct(pikv_session *s, const pk_press *part, const int32_t *ids, int n, pk_recon_record *rec)
{
    const int np = part->n_recon_prompt, room = s->model->cfg.n_positions - rec->len;
    if (room < np + 1)
        return pk_fail("press '%s': the context ends at position %d and its reconstruction needs %d more "
                       "positions (prompt of %d tokens + 1), past the model's %d (n_positions); shorten the "
                       "context",
                       part->name, rec->len, np + 1, np, s->model->cfg.n_positions);
    int chunk = part->recon_chunk < room - np ? part->recon_chunk : room - np;
    if (chunk > n) chunk = n;
    pk_kv_snapshot snap = {0};
    int32_t *tokens = pk_malloc_array((size_t)(np + chunk), sizeof *tokens, "kvzip reconstruction");
    int rc = tokens ? pk_kv_snapshot_take(&s->fwd.kv, &snap) : -1;
    int copied = 0; /* positions the current copy holds after the context */
    for (int done = 0, m; rc == 0 && done < n; done += m) {
        m = n - done < chunk ? n - done : chunk;
        if (copied > 0 && copied + m > room) {
            if (pk_kv_snapshot_restore(&s->fwd.kv, &snap)) rc = -1;
            s->fwd.pos = rec->len;
            copied = 0;
        }
        const int lead = copied == 0 ? np : 0;
        memcpy(tokens, part->recon_prompt, (size_t)lead * sizeof *tokens);
        memcpy(tokens + lead, ids + done, (size_t)m * sizeof *tokens);
        rec->first_row = lead;
        s->presses.recording = rec;
        if (rc == 0) rc = pikv_forward(s, tokens, lead + m, NULL, 0);
        s->presses.recording = NULL;
        copied += lead + m;
    }
    if (tokens && pk_kv_snapshot_restore(&s->fwd.kv, &snap)) rc = -1;
    s->fwd.pos = rec->len;
    pk_kv_snapshot_free(&snap);
    pk_free(tokens);
    return rc;
}

int pk_prefill_reconstructed(pikv_session *s, const int32_t *ids, int n, pk_press *press, float *logits)
{
    const pikv_config *c = &s->model->cfg;
    const pk_press *part = pk_press_reconstruction_part(press);
    if (pikv_forward(s, ids, n, logits, 0)) return -1;
    const double t0 = pikv_now();
    pk_recon_record rec = {.len = s->fwd.pos};
    const size_t before = pk_kv_bytes(&s->fwd.kv);
    int rc = (rec.scores = alloc_scores(c->n_layer, c->n_head, rec.len)) ? 0 : -1;
    if (rc == 0) rc = reconstruct(s, part, ids, n, &rec);
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        pk_press_view view = {.cfg = c, .layer = l, .kv = &s->fwd.kv, .backend = s->fwd.backend,
                              .q_pos0 = s->fwd.pos, .scale = pk_attention_scale(c, l),
                              .recon_scores = (const float *const *const *)rec.scores, .recon_len = rec.len};
        if (pk_compress_layer(press, &view, &s->fwd.kv, &s->presses.keep))
            rc = pk_fail_prefix("press '%s' at layer %d", press->name, l);
    }
    free_scores(rec.scores, c->n_layer, c->n_head);
    pk_free(rec.weights);
    if (rc) return -1;
    s->presses.stats.kv_bytes_before += before;
    s->presses.stats.kv_bytes_after += pk_kv_bytes(&s->fwd.kv);
    s->presses.stats.compression_s += pikv_now() - t0;
    return 0;
}
