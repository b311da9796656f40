#include "router/placement.h"
#include "router/eplb.h"
#include "util/error.h"
#include "util/mem.h"

#include <string.h>

void pk_placement_free(pk_placement *p)
{
    pk_free(p->items);
    pk_free(p->first);
    pk_free(p->load);
    memset(p, 0, sizeof *p);
}

double pk_placement_imbalance(const pk_placement *p)
{
    long max = 0, sum = 0;
    for (int w = 0; w < p->workers; w++) {
        sum += p->load[w];
        max = p->load[w] > max ? p->load[w] : max;
    }
    return sum > 0 ? (double)max * p->workers / (double)sum : 1.0;
}

/* Size the plan's arrays for `workers` and up to `items` items (reused across calls). */
static int reserve(pk_placement *p, int workers, int items)
{
    if (p->workers != workers) {
        pk_free(p->first);
        pk_free(p->load);
        p->first = pk_calloc((size_t)workers + 1, sizeof *p->first, "placement");
        p->load = pk_calloc((size_t)workers, sizeof *p->load, "placement");
        if (!p->first || !p->load) return -1;
        p->workers = workers;
    }
    if (items > p->cap_items) {
        pk_work_item *grown = pk_realloc(p->items, (size_t)items * sizeof *grown, "placement");
        if (!grown) return -1;
        p->items = grown;
        p->cap_items = items;
    }
    memset(p->load, 0, (size_t)workers * sizeof *p->load);
    return 0;
}

/* Contiguous equal-count split of the heads: worker w gets heads
 * [w * H / W, (w + 1) * H / W), whatever their lengths. */
static int place_equal_count(const int *len, int H, int W, pk_placement *p)
{
    if (reserve(p, W, H)) return -1;
    p->n_items = 0;
    for (int w = 0; w < W; w++) {
        p->first[w] = p->n_items;
        for (int h = w * H / W; h < (w + 1) * H / W; h++) {
            p->items[p->n_items++] = (pk_work_item){h, 0, len[h]};
            p->load[w] += len[h];
        }
    }
    p->first[W] = p->n_items;
    return 0;
}

/* EPLB: W * (ceil(H / W) + 2) slots, so that the heaviest heads get extra
 * replicas; replica r of a head with c replicas reads slice r of c. */
static int place_eplb(const int *len, int H, int W, pk_placement *p)
{
    const int slots = W * ((H + W - 1) / W + 2);
    float *weight = pk_malloc_array((size_t)H, sizeof *weight, "placement loads");
    pk_eplb_plan plan = {0};
    int rc = -1;
    if (!weight || reserve(p, W, slots)) goto done;
    for (int h = 0; h < H; h++) weight[h] = (float)len[h];
    if (pk_eplb_rebalance(weight, 1, H, slots, 1, 1, W, &plan)) goto done;
    const int per_worker = slots / W;
    p->n_items = 0;
    for (int w = 0; w < W; w++) {
        p->first[w] = p->n_items;
        for (int slot = w * per_worker; slot < (w + 1) * per_worker; slot++) {
            const int h = plan.phy2log[slot], count = plan.logcnt[h];
            int r = 0;
            while (plan.log2phy[h * plan.max_replicas + r] != slot) r++;
            const int start = (int)((long)len[h] * r / count), end = (int)((long)len[h] * (r + 1) / count);
            if (end > start) {
                p->items[p->n_items++] = (pk_work_item){h, start, end - start};
                p->load[w] += end - start;
            }
        }
    }
    p->first[W] = p->n_items;
    rc = 0;
done:
    pk_eplb_plan_free(&plan);
    pk_free(weight);
    return rc;
}

int pk_place_heads(const int *head_len, int n_head, int workers, pk_place_policy policy, pk_placement *out)
{
    if (workers < 1) return pk_fail("placement: %d workers", workers);
    return policy == PK_PLACE_EPLB ? place_eplb(head_len, n_head, workers, out)
                                   : place_equal_count(head_len, n_head, workers, out);
}
