#include "router/shard_plan.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

void pk_shard_plan_free(pk_shard_plan *p)
{
    pk_free(p->entries);
    pk_free(p->partials);
    memset(p, 0, sizeof *p);
}

/* Count one layer's placement: entries and distinct non-empty shards per GPU,
 * and the shards spread over several GPUs. last_gpu and n_gpus are [n_shard]
 * scratch. */
static void tally_layer(const pk_placement *place, int n_shard, int *last_gpu, int *n_gpus, long *entries,
                        long *partials, pk_shard_plan *p)
{
    for (int s = 0; s < n_shard; s++) last_gpu[s] = -1, n_gpus[s] = 0;
    for (int g = 0; g < place->workers; g++) {
        entries[g] = place->load[g];
        for (int i = place->first[g]; i < place->first[g + 1]; i++) {
            const int s = place->items[i].head;
            if (place->items[i].count == 0 || last_gpu[s] == g) continue; /* nothing read, nothing to send */
            last_gpu[s] = g;
            n_gpus[s]++;
            partials[g]++;
        }
    }
    p->slices += place->n_items;
    for (int s = 0; s < n_shard; s++) p->split += n_gpus[s] > 1;
}

int pk_shard_plan_make(const int *len, int n_layer, int n_shard, int gpus, pk_place_policy policy,
                       pk_shard_plan *out)
{
    memset(out, 0, sizeof *out);
    if (n_layer < 1 || n_shard < 1) return pk_fail("shard plan: %d layers of %d shards", n_layer, n_shard);
    if (gpus < 1) return pk_fail("shard plan: %d GPUs", gpus);
    const size_t cells = (size_t)n_layer * (size_t)gpus;
    int *last_gpu = pk_malloc_array((size_t)n_shard, sizeof *last_gpu, "shard plan");
    int *n_gpus = pk_malloc_array((size_t)n_shard, sizeof *n_gpus, "shard plan");
    pk_placement place = {0};
    out->entries = pk_calloc(cells, sizeof *out->entries, "shard plan");
    out->partials = pk_calloc(cells, sizeof *out->partials, "shard plan");
    out->n_layer = n_layer;
    out->gpus = gpus;
    int rc = -1;
    if (!last_gpu || !n_gpus || !out->entries || !out->partials) goto done;
    for (int l = 0; l < n_layer; l++) {
        const int *layer_len = len + (size_t)l * (size_t)n_shard;
        for (int s = 0; s < n_shard; s++)
            if (layer_len[s] < 0) {
                pk_fail("shard plan: shard %d of layer %d has %d entries", s, l, layer_len[s]);
                goto done;
            }
        if (pk_place_heads(layer_len, n_shard, gpus, policy, &place)) goto done;
        tally_layer(&place, n_shard, last_gpu, n_gpus, out->entries + (size_t)l * gpus,
                    out->partials + (size_t)l * gpus, out);
    }
    rc = 0;
done:
    pk_placement_free(&place);
    pk_free(last_gpu);
    pk_free(n_gpus);
    if (rc) pk_shard_plan_free(out);
    return rc;
}

long pk_shard_plan_gpu_entries(const pk_shard_plan *p, int g)
{
    long sum = 0;
    for (int l = 0; l < p->n_layer; l++) sum += p->entries[(size_t)l * p->gpus + g];
    return sum;
}

double pk_shard_plan_imbalance(const pk_shard_plan *p)
{
    long max_sum = 0, total = 0;
    for (int l = 0; l < p->n_layer; l++) {
        long max = 0;
        for (int g = 0; g < p->gpus; g++) {
            const long e = p->entries[(size_t)l * p->gpus + g];
            total += e;
            max = e > max ? e : max;
        }
        max_sum += max;
    }
    return total > 0 ? (double)max_sum * p->gpus / (double)total : 1.0;
}
