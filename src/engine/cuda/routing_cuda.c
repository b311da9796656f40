/* Query-time routing on the CUDA engine (see routing_cuda.h). */
#include "engine/cuda/routing_cuda.h"
#include "engine/session.h"
#include "model/model.h"
#include "router/route.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

/* Bit 63 of a mask: every row has it, and so does a slot every query reads. */
#define EVERY_ROW (UINT64_C(1) << 63)
enum { GPU_EXPERTS = 63 };

struct pk_cuda_routing {
    pk_cuda_session *s;
    const pikv_config *c;
    int seq;
    pk_route_table *table;
    pk_kvcache mirror;   /* one layer of float32 heads: sealed to the table; keys of sampled rows */
    int *idx;            /* [n_positions]: the entries a row reads */
    float *weights;      /* [n_positions]: scratch of the missed mass */
    uint64_t *masks;     /* [n_positions]: a head's slot masks, while they are built */
    size_t bytes_to_host;
};

void pk_cuda_routing_free(pk_cuda_routing *r)
{
    if (!r) return;
    pk_cuda_route_end(r->s);
    pk_kv_free(&r->mirror);
    pk_free(r->idx);
    pk_free(r->weights);
    pk_free(r->masks);
    pk_free(r);
}

size_t pk_cuda_routing_bytes(const pk_cuda_routing *r) { return r->bytes_to_host; }

int pk_cuda_routing_greedy(pk_cuda_routing *r, int32_t token, int steps, float *logits, int32_t *chosen)
{
    static const pikv_sampling greedy = {.greedy = 1};
    for (int i = 0; i < steps; i++) {
        if (pk_cuda_forward(r->s, r->seq, &token, 1, logits, 0)) return -1;
        token = pikv_sample(logits, r->c->vocab_size, &greedy, NULL);
        if (chosen) chosen[i] = token;
    }
    return 0;
}

/* The mask of a row routed to `wanted`: its experts' bits and bit 63. */
static uint64_t row_mask(const unsigned char *wanted, int experts)
{
    uint64_t m = EVERY_ROW;
    for (int e = 0; e < experts; e++)
        if (wanted[e]) m |= UINT64_C(1) << e;
    return m;
}

/* Experts a head routes over (0 when it had nothing to route). */
static int head_experts(const pk_route_table *t, int layer, int head)
{
    const pk_route_head *h = &t->heads[(size_t)layer * (size_t)t->n_head + (size_t)head];
    return h->experts.centroids ? h->experts.cfg.experts : 0;
}

/* The masks of a head's routed slots, from the route table's own rule
 * (pk_route_reads): slot j has bit e when a query routed to expert e alone
 * reads it, and bit 63 when a query routed nowhere does. A row routed to a
 * set of experts reads the slot exactly when the rule says so, since the
 * rule reads an entry when any one of the wanted experts is its own. */
static void slot_masks(const pk_route_table *t, int layer, int head, int n, uint64_t *masks)
{
    const int E = head_experts(t, layer, head);
    unsigned char wanted[PK_ROUTER_MAX_EXPERTS] = {0};
    for (int j = 0; j < n; j++) masks[j] = pk_route_reads(t, layer, head, j, wanted) ? EVERY_ROW : 0;
    for (int e = 0; e < E; e++) {
        wanted[e] = 1;
        for (int j = 0; j < n; j++)
            if (pk_route_reads(t, layer, head, j, wanted)) masks[j] |= UINT64_C(1) << e;
        wanted[e] = 0;
    }
}

/* The engine's callback for one layer of a call of R rows at the
 * sequence's position: each row's masks, and the routing statistics. */
static int route_layer(void *ctx, int layer, const float *queries, int R, uint64_t *masks)
{
    pk_cuda_routing *r = ctx;
    const pikv_config *c = r->c;
    const int H = c->n_head, hd = c->head_dim, C = c->n_embd;
    const int32_t pos0 = pk_cuda_position(r->s, r->seq);
    if (pk_route_table_check(r->table, &r->mirror)) return -1;
    r->bytes_to_host += (size_t)R * (size_t)C * sizeof(float);
    int sampled = 0;
    for (int row = 0; row < R; row++) sampled |= pk_route_sampled(r->table, pos0 + row);
    const float scale = pk_attention_scale(c, layer);
    for (int h = 0; h < H; h++) {
        pk_kv_head *kh = pk_kv_at(&r->mirror, 0, h);
        const int before = pk_cuda_head_length(r->s, r->seq, layer, h, NULL);
        kh->len = before + R;
        if (sampled) {
            if (pk_cuda_read_heads(r->s, r->seq, layer, h, 1, kh->len, (float *)kh->k, (float *)kh->v)) return -1;
            r->bytes_to_host += 2 * (size_t)kh->len * (size_t)hd * sizeof(float);
        }
        const int E = head_experts(r->table, layer, h);
        for (int row = 0; row < R; row++) {
            const float *q = queries + (size_t)row * (size_t)C + (size_t)h * (size_t)hd;
            const int32_t qpos = pos0 + row;
            const int visible = before + row + 1;
            unsigned char wanted[PK_ROUTER_MAX_EXPERTS];
            pk_route_wanted(r->table, layer, h, q, wanted);
            masks[(size_t)row * (size_t)H + (size_t)h] = row_mask(wanted, E);
            int n_visible;
            const int n = pk_route_gather(r->table, layer, h, kh, wanted, qpos, visible, r->idx, &n_visible);
            const double missed = pk_route_sampled(r->table, qpos)
                                      ? pk_route_missed_mass(&r->mirror, kh, q, qpos, visible, r->idx, n, scale,
                                                             r->weights)
                                      : -1.0;
            pk_route_record(r->table, n, n_visible, missed);
        }
    }
    return 0;
}

/* Check that the table describes what sequence seq holds and send each
 * head's slot masks. */
static int upload_masks(pk_cuda_routing *r, const char *press)
{
    const pikv_config *c = r->c;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head; h++) {
            const pk_route_head *rh = &r->table->heads[(size_t)l * (size_t)c->n_head + (size_t)h];
            const int len = pk_cuda_head_length(r->s, r->seq, l, h, NULL);
            if (head_experts(r->table, l, h) > GPU_EXPERTS)
                return pk_fail("press '%s' routes over %d experts: the GPU's route masks hold %d", press,
                               head_experts(r->table, l, h), GPU_EXPERTS);
            if (rh->n_entries != len)
                return pk_fail("press '%s': its route table describes %d entries of layer %d head %d, the GPU's "
                               "sequence holds %d",
                               press, rh->n_entries, l, h, len);
            slot_masks(r->table, l, h, len, r->masks);
            if (pk_cuda_route_head(r->s, l, h, r->masks, len)) return -1;
        }
    return 0;
}

pk_cuda_routing *pk_cuda_routing_new(pk_cuda_session *s, const pikv_config *c, int seq, pk_press *press)
{
    pk_route_table *table = press && (press->caps & PK_PRESS_ROUTES_QUERIES) ? press->ops->routing(press) : NULL;
    if (!table || table->n_layer != c->n_layer || table->n_head != c->n_head) {
        pk_fail("CUDA routing: press '%s' has no route table for this model", press ? press->name : "(none)");
        return NULL;
    }
    pk_cuda_routing *r = pk_calloc(1, sizeof *r, "CUDA routing");
    if (!r) return NULL;
    *r = (pk_cuda_routing){.s = s, .c = c, .seq = seq, .table = table};
    const size_t P = (size_t)c->n_positions;
    r->idx = pk_malloc_array(P, sizeof *r->idx, "routed entries");
    r->weights = pk_malloc_array(P, sizeof *r->weights, "routed attention");
    r->masks = pk_malloc_array(P, sizeof *r->masks, "route masks");
    int rc = r->idx && r->weights && r->masks ? 0 : -1;
    if (rc == 0) rc = pk_kv_init(&r->mirror, 1, c->n_head, c->head_dim, PIKV_KV_F32, PIKV_KV_F32);
    if (rc == 0) rc = pk_kv_reserve(&r->mirror, c->n_positions, 1);
    /* The mirror's heads are plain (no window) and their positions are their slots. */
    for (int h = 0; rc == 0 && h < c->n_head; h++)
        for (int j = 0; j < c->n_positions; j++) pk_kv_at(&r->mirror, 0, h)->pos[j] = j;
    if (rc == 0) rc = pk_cuda_route_begin(s, seq, route_layer, r);
    if (rc == 0) rc = upload_masks(r, press->name);
    if (rc == 0) pk_route_table_seal(table, &r->mirror);
    if (rc) {
        pk_cuda_routing_free(r);
        return NULL;
    }
    return r;
}
