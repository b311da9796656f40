#include "bench/gpu_cost.h"
#include "router/eplb.h"
#include "util/error.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

size_t pk_partial_state_bytes(int head_dim) { return (size_t)(2 + head_dim) * sizeof(float); }

static int check_links(const pk_gpu_links *k)
{
    const struct {
        const char *name;
        double v;
    } rates[] = {{"HBM bandwidth", k->hbm_gbs}, {"NVLink bandwidth", k->nvlink_gbs}, {"InfiniBand bandwidth", k->ib_gbs}};
    for (size_t i = 0; i < sizeof rates / sizeof *rates; i++)
        if (!(rates[i].v > 0) || !isfinite(rates[i].v))
            return pk_fail("GPU cost: %s must be a positive number of GB/s, got %g", rates[i].name, rates[i].v);
    if (!(k->nvlink_us >= 0) || !(k->ib_us >= 0) || !isfinite(k->nvlink_us) || !isfinite(k->ib_us))
        return pk_fail("GPU cost: an all-gather's fixed cost must be >= 0 us, got %g and %g", k->nvlink_us, k->ib_us);
    if (!(k->rest_us >= 0) || !isfinite(k->rest_us))
        return pk_fail("GPU cost: the rest of a step must be >= 0 us, got %g", k->rest_us);
    if (k->gpus_per_node < 1) return pk_fail("GPU cost: %d GPUs a node", k->gpus_per_node);
    return 0;
}

/* The step from its parts: the weights read at HBM bandwidth, the rest as
 * given, and the KV read and exchange already in `c`. */
static void add_up_step(pk_gpu_cost *c, size_t weight_bytes, const pk_gpu_links *links)
{
    c->weights_us = (double)weight_bytes / (links->hbm_gbs * 1e3);
    c->rest_us = links->rest_us;
    c->step_us = c->weights_us + c->kv_read_us + c->exchange_us + c->rest_us;
}

int pk_gpu_cost_model(const pk_shard_plan *p, size_t entry_bytes, int head_dim, size_t weight_bytes,
                      const pk_gpu_links *links, pk_gpu_cost *out)
{
    memset(out, 0, sizeof *out);
    if (check_links(links)) return -1;
    if (head_dim < 1) return pk_fail("GPU cost: head_dim %d", head_dim);
    const int G = p->gpus;
    const double hbm = links->hbm_gbs * 1e3; /* bytes per microsecond */
    const int one_node = G <= links->gpus_per_node;
    const double link = (one_node ? links->nvlink_gbs : links->ib_gbs) * 1e3;
    const double fixed = G == 1 ? 0 : one_node ? links->nvlink_us : links->ib_us;
    const double state = (double)pk_partial_state_bytes(head_dim);
    double total = 0;
    for (int g = 0; g < G; g++) {
        const double bytes = (double)pk_shard_plan_gpu_entries(p, g) * (double)entry_bytes;
        total += bytes;
        out->kv_bytes_max = fmax(out->kv_bytes_max, bytes);
    }
    out->kv_bytes_mean = total / G;
    double busiest_in = 0;
    for (int l = 0; l < p->n_layer; l++) {
        const long *entries = p->entries + (size_t)l * G, *partials = p->partials + (size_t)l * G;
        long states = 0, max_entries = 0, min_own = -1;
        for (int g = 0; g < G; g++) {
            states += partials[g];
            max_entries = entries[g] > max_entries ? entries[g] : max_entries;
            min_own = min_own < 0 || partials[g] < min_own ? partials[g] : min_own;
        }
        /* An all-gather brings each GPU every state but its own. */
        const double in = G == 1 ? 0 : (double)(states - min_own) * state;
        out->kv_read_us += (double)max_entries * (double)entry_bytes / hbm;
        out->exchange_us += fixed + in / link;
        busiest_in += in;
    }
    out->exchange_bytes = busiest_in;
    add_up_step(out, weight_bytes, links);
    return 0;
}

int pk_gpu_simulate(const int *len, int n_layer, int n_shard, int gpus, pk_place_policy policy, size_t entry_bytes,
                    int head_dim, size_t weight_bytes, const pk_gpu_links *links, pk_gpu_result *out)
{
    pk_shard_plan p;
    memset(out, 0, sizeof *out);
    if (pk_shard_plan_make(len, n_layer, n_shard, gpus, policy, &p)) return -1;
    const int rc = pk_gpu_cost_model(&p, entry_bytes, head_dim, weight_bytes, links, &out->cost);
    out->imbalance = pk_shard_plan_imbalance(&p);
    out->slices = p.slices;
    out->split = p.split;
    pk_shard_plan_free(&p);
    return rc;
}

int pk_gpu_by_sequence(const int *len, int n_layer, int n_head, int batch, int gpus, size_t entry_bytes,
                       size_t weight_bytes, const pk_gpu_links *links, pk_gpu_result *out)
{
    memset(out, 0, sizeof *out);
    if (check_links(links)) return -1;
    if (n_layer < 1 || n_head < 1 || batch < 1 || gpus < 1)
        return pk_fail("GPU cost: %d layers, %d heads, %d sequences on %d GPUs", n_layer, n_head, batch, gpus);
    /* Balanced packing puts the same number of items in every pack: sequences
     * of no entries fill the batch up to a multiple of the GPUs, and go last. */
    const int items = (batch + gpus - 1) / gpus * gpus;
    float *load = pk_calloc((size_t)items, sizeof *load, "sequence loads");
    int *pack = pk_malloc_array((size_t)items, sizeof *pack, "sequence packing");
    int *rank = pk_malloc_array((size_t)items, sizeof *rank, "sequence packing");
    double *held = pk_calloc((size_t)gpus, sizeof *held, "entries per GPU");
    int rc = -1;
    if (!load || !pack || !rank || !held) goto done;
    for (int l = 0; l < n_layer; l++)
        for (int h = 0; h < n_head; h++)
            for (int b = 0; b < batch; b++) {
                const int entries = len[((size_t)l * n_head + h) * batch + b];
                if (entries < 0) {
                    pk_fail("GPU cost: head %d of sequence %d in layer %d holds %d entries", h, b, l, entries);
                    goto done;
                }
                load[b] += (float)entries;
            }
    if (pk_eplb_balanced_packing(load, items, gpus, pack, rank)) goto done;
    double total = 0, busiest = 0;
    for (int b = 0; b < batch; b++) held[pack[b]] += load[b];
    for (int g = 0; g < gpus; g++) {
        total += held[g];
        busiest = fmax(busiest, held[g]);
    }
    const double hbm = links->hbm_gbs * 1e3; /* bytes per microsecond */
    pk_gpu_cost *c = &out->cost;
    c->kv_bytes_max = busiest * (double)entry_bytes;
    c->kv_bytes_mean = total * (double)entry_bytes / gpus;
    c->kv_read_us = c->kv_bytes_max / hbm;
    add_up_step(c, weight_bytes, links);
    out->imbalance = total > 0 ? busiest * gpus / total : 1;
    out->slices = batch;
    rc = 0;
done:
    pk_free(load);
    pk_free(pack);
    pk_free(rank);
    pk_free(held);
    return rc;
}
