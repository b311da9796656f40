/* Prefill with a press that scores the context by reconstruction (kvzip,
 * PK_PRESS_RECONSTRUCTION_SCORES): the context is prefilled with the full
 * cache, then the model is asked to repeat it -- the press's prompt followed
 * by the context again, teacher-forced -- as windows that each start the
 * copy again right after the prompt; the attention hook records, per (layer,
 * head, cached entry), the largest attention weight a query of the repeated
 * copy gives it, from the softmax the forward pass computes anyway. Then
 * each layer is compressed with the press, which reads those scores through
 * its view. The press decides; the engine runs. */
#include "engine/compress.h"
#include "engine/session.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

int pk_recon_attention(pk_recon_record *rec, pk_forward *f, int layer, int T)
{
    if (T <= rec->first_row) return 0;
    const pk_kvcache *kv = &f->kv;
    for (int h = 0; h < kv->n_head; h++)
        memset(rec->slot_max[h], 0, (size_t)pk_kv_head_at(kv, layer, h)->len * sizeof **rec->slot_max);
    pk_attention_args a = pk_forward_attention_args(f, layer, T);
    a.max_weights = rec->slot_max;
    a.max_row0 = rec->first_row;
    f->backend->attention(&a);
    for (int h = 0; h < kv->n_head; h++) {
        const pk_kv_head *kh = pk_kv_head_at(kv, layer, h);
        const float *max = rec->slot_max[h];
        float *best = rec->scores[layer][h];
        for (int j = 0; j < kh->len; j++) {
            const int pos = kh->pos[j];
            if (pos < rec->len && max[j] > best[pos]) best[pos] = max[j];
        }
    }
    return 1;
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

/* Rows per forward call of the copy: whole windows up to this many (at least
 * one), so that short windows still make products of many rows. */
enum { RECON_CALL_ROWS = 512 };

/* Run the reconstruction of the n context tokens ids, which end at position
 * rec->len: the prompt once (its queries are not recorded), then the context
 * again as windows of `window` tokens, each a copy that starts right after
 * the prompt and sees the cache and its own earlier tokens only. A window is
 * the press's chunk, capped to the positions left after the prompt; the
 * windows' keys and values never enter the cache, and at the end the cache is
 * rewound to the context (before_prompt). */
static int reconstruct(pikv_session *s, const pk_press *part, const int32_t *ids, int n, pk_recon_record *rec)
{
    const int np = part->n_recon_prompt, room = s->model->cfg.n_positions - rec->len;
    if (room < np + 1)
        return pk_fail("press '%s': the context ends at position %d and its reconstruction needs %d more "
                       "positions (prompt of %d tokens + 1), past the model's %d (n_positions); shorten the "
                       "context",
                       part->name, rec->len, np + 1, np, s->model->cfg.n_positions);
    int window = part->recon_chunk < room - np ? part->recon_chunk : room - np;
    if (window > n) window = n;
    const int per_call = (RECON_CALL_ROWS / window > 1 ? RECON_CALL_ROWS / window : 1) * window;
    pk_kv_snapshot before_prompt = {0};
    rec->first_row = np;
    s->presses.recording = rec;
    int rc = pk_kv_snapshot_take(&s->fwd.kv, &before_prompt);
    if (rc == 0) rc = pikv_forward(s, part->recon_prompt, np, NULL, 0);
    rec->first_row = 0;
    for (int done = 0; rc == 0 && done < n; done += per_call)
        rc = pk_forward_windows(s, ids + done, n - done < per_call ? n - done : per_call, window);
    s->presses.recording = NULL;
    if (before_prompt.len && pk_kv_snapshot_restore(&s->fwd.kv, &before_prompt)) rc = -1;
    s->fwd.pos = rec->len;
    pk_kv_snapshot_free(&before_prompt);
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
    /* one layer's slot-order maxima: a [1][n_head][n_positions] score array */
    float ***slots = alloc_scores(1, c->n_head, c->n_positions);
    int rc = slots && (rec.scores = alloc_scores(c->n_layer, c->n_head, rec.len)) ? 0 : -1;
    if (rc == 0) {
        rec.slot_max = slots[0];
        rc = reconstruct(s, part, ids, n, &rec);
    }
    for (int l = 0; rc == 0 && l < c->n_layer; l++) {
        pk_press_view view = {.cfg = c, .layer = l, .kv = &s->fwd.kv, .backend = s->fwd.backend,
                              .q_pos0 = s->fwd.pos, .scale = pk_attention_scale(c, l),
                              .recon_scores = (const float *const *const *)rec.scores, .recon_len = rec.len};
        if (pk_compress_layer(press, &view, &s->fwd.kv, &s->presses.keep))
            rc = pk_fail_prefix("press '%s' at layer %d", press->name, l);
    }
    free_scores(rec.scores, c->n_layer, c->n_head);
    free_scores(slots, 1, c->n_head);
    if (rc) return -1;
    s->presses.stats.kv_bytes_before += before;
    s->presses.stats.kv_bytes_after += pk_kv_bytes(&s->fwd.kv);
    s->presses.stats.compression_s += pikv_now() - t0;
    return 0;
}
