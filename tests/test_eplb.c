/* Tests for EPLB (src/router/eplb.c, eplb_json.c): a global-policy example
 * worked by hand, a hierarchical case worked by hand, edge cases, every invalid input, allocation
 * failures, and the JSON front end of `pikv eplb`. */
#include "check.h"
#include "pikv.h"
#include "router/eplb.h"
#include "util/mem.h"

#include <math.h>
#include <string.h>

/* True when a[0..n) equals b[0..n). */
static int same_ints(const int *a, const int *b, int n)
{
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

/* Check that a plan is self-consistent: every slot's expert lists that slot
 * among its replicas, each expert's replicas are distinct slots holding it, the
 * entries past logcnt are -1, the counts add up to R, and M is the largest count. */
static void check_consistent(const pk_eplb_plan *plan, const char *name)
{
    int largest = 0;
    for (int l = 0; l < plan->num_layers; l++) {
        const int *phy2log = plan->phy2log + (size_t)l * plan->num_replicas;
        const int *logcnt = plan->logcnt + (size_t)l * plan->num_experts;
        const int *log2phy =
            plan->log2phy + (size_t)l * plan->num_experts * plan->max_replicas;
        int total = 0, ok = 1;
        for (int e = 0; e < plan->num_experts; e++) {
            total += logcnt[e];
            if (logcnt[e] > largest) largest = logcnt[e];
            for (int r = 0; r < plan->max_replicas; r++) {
                int slot = log2phy[e * plan->max_replicas + r];
                if (r >= logcnt[e]) {
                    ok &= slot == -1;
                    continue;
                }
                ok &= slot >= 0 && slot < plan->num_replicas && phy2log[slot] == e;
                for (int q = 0; q < r; q++) ok &= log2phy[e * plan->max_replicas + q] != slot;
            }
        }
        for (int p = 0; p < plan->num_replicas; p++) {
            int e = phy2log[p], found = 0;
            ok &= e >= 0 && e < plan->num_experts;
            for (int r = 0; ok && r < logcnt[e]; r++)
                found |= log2phy[e * plan->max_replicas + r] == p;
            ok &= found;
        }
        CHECK(ok, "%s: layer %d: phy2log, log2phy and logcnt disagree", name, l);
        CHECK(total == plan->num_replicas, "%s: layer %d: counts add to %d, not %d", name, l,
              total, plan->num_replicas);
    }
    CHECK(largest == plan->max_replicas, "%s: max_replicas %d, largest count %d", name,
          plan->max_replicas, largest);
}

/* The load on each device of layer 0 (load / count per replica, R / D slots each). */
static void device_loads(const pk_eplb_plan *plan, const float *load, int num_gpus,
                         float *per_gpu)
{
    int per_device = plan->num_replicas / num_gpus;
    for (int d = 0; d < num_gpus; d++) per_gpu[d] = 0.0f;
    for (int p = 0; p < plan->num_replicas; p++) {
        int e = plan->phy2log[p];
        per_gpu[p / per_device] += load[e] / (float)plan->logcnt[e];
    }
}

/* A worked example: loads 50/5/30/10/20/5 on 8 replicas; 3 groups on 2 nodes
 * do not divide evenly, so the global policy applies. */
static void test_worked_example(void)
{
    const float load[] = {50, 5, 30, 10, 20, 5};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 1, 6, 8, 3, 2, 4, &plan);
    CHECK(rc == 0, "worked example failed: %s", pikv_last_error());
    if (rc != 0) return;
    const int phy2log[] = {0, 1, 0, 5, 4, 3, 2, 2};
    const int logcnt[] = {2, 1, 2, 1, 1, 1};
    const int log2phy[] = {0, 2, 1, -1, 6, 7, 5, -1, 4, -1, 3, -1};
    CHECK(same_ints(plan.phy2log, phy2log, 8), "worked example: phy2log");
    CHECK(same_ints(plan.logcnt, logcnt, 6), "worked example: logcnt");
    CHECK(plan.max_replicas == 2, "worked example: M = %d", plan.max_replicas);
    CHECK(same_ints(plan.log2phy, log2phy, 12), "worked example: log2phy");
    float per_gpu[4];
    device_loads(&plan, load, 4, per_gpu);
    for (int d = 0; d < 4; d++)
        CHECK(per_gpu[d] == 30.0f, "worked example: device %d load %g, not 30", d, per_gpu[d]);
    check_consistent(&plan, "worked example");
    pk_eplb_plan_free(&plan);
    CHECK(!plan.phy2log && !plan.logcnt && !plan.log2phy, "plan_free leaves pointers");
}

/* A hierarchical case: 8 experts in 4 groups of 2, 2 nodes, 4 GPUs, 12 slots.
 *
 * loads e0..e7 = [12, 4, 6, 10, 3, 3, 20, 2]; group loads g0..g3 = [16, 16, 6, 22].
 * Step 1, groups onto 2 nodes (2 each), by descending load g3, g0, g1, g2:
 *   g3 -> node 0 (tie, lower node) rank 0; g0 -> node 1 (0 < 22) rank 0;
 *   g1 -> node 1 (16 < 22) rank 1; g2 -> node 0 (the only one not full) rank 1.
 *   Node-ordered ids (node*2 + rank)*2 + j: e6,e7 -> 0,1; e4,e5 -> 2,3;
 *   e0,e1 -> 4,5; e2,e3 -> 6,7. Node 0 holds [e6,e7,e4,e5] = [20,2,3,3],
 *   node 1 holds [e0,e1,e2,e3] = [12,4,6,10].
 * Step 2, 6 slots per node (2 extra):
 *   node 0: 20 -> e6 (share 10), then 10 -> e6 again: counts [3,1,1,1],
 *     replicas p0..p5 = e6,e7,e4,e5,e6(rank 1),e6(rank 2);
 *   node 1: 12 -> e0 (share 6), then shares [6,4,6,10] -> e3: counts [2,1,1,2],
 *     replicas p0..p5 = e0,e1,e2,e3,e0(rank 1),e3(rank 1).
 * Step 3, replicas onto the node's 2 GPUs, 3 each:
 *   node 0 loads [6.67,2,3,3,6.67,6.67], order p0,p4,p5,p2,p3,p1:
 *     p0 -> gpu 0, p4 -> gpu 1, p5 -> gpu 0 (tie), p2 -> gpu 1, p3 -> gpu 1 (9.67 <
 *     13.33, now full), p1 -> gpu 0. Slots 0..5 = p0,p5,p1 | p4,p2,p3
 *     = e6,e6,e7 | e6,e4,e5 (device loads 15.33 and 12.67);
 *   node 1 loads [6,4,6,5,6,5], order p0,p2,p4,p3,p5,p1:
 *     p0 -> gpu 0, p2 -> gpu 1, p4 -> gpu 0 (tie), p3 -> gpu 1 (6 < 12), p5 -> gpu 1
 *     (11 < 12, now full), p1 -> gpu 0. Slots 6..11 = p0,p4,p1 | p2,p3,p5
 *     = e0,e0,e1 | e2,e3,e3 (device loads 16 and 16).
 * So phy2log = [6,6,7,6,4,5, 0,0,1,2,3,3], logcnt = [2,1,1,2,1,1,3,1], M = 3, and
 * e6's replicas by creation rank are slots 0 (original), 3 (rank 1), 1 (rank 2). */
static void test_hierarchical_by_hand(void)
{
    const float load[] = {12, 4, 6, 10, 3, 3, 20, 2};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 1, 8, 12, 4, 2, 4, &plan);
    CHECK(rc == 0, "hierarchical failed: %s", pikv_last_error());
    if (rc != 0) return;
    const int phy2log[] = {6, 6, 7, 6, 4, 5, 0, 0, 1, 2, 3, 3};
    const int logcnt[] = {2, 1, 1, 2, 1, 1, 3, 1};
    const int log2phy[] = {6,  7,  -1, 8, -1, -1, 9, -1, -1, 10, 11, -1,
                           4,  -1, -1, 5, -1, -1, 0, 3,  1,  2,  -1, -1};
    CHECK(same_ints(plan.phy2log, phy2log, 12), "hierarchical: phy2log");
    CHECK(same_ints(plan.logcnt, logcnt, 8), "hierarchical: logcnt");
    CHECK(plan.max_replicas == 3, "hierarchical: M = %d", plan.max_replicas);
    CHECK(same_ints(plan.log2phy, log2phy, 24), "hierarchical: log2phy");
    float per_gpu[4];
    device_loads(&plan, load, 4, per_gpu);
    CHECK(fabsf(per_gpu[0] - 46.0f / 3) < 1e-4f && fabsf(per_gpu[1] - 38.0f / 3) < 1e-4f &&
              per_gpu[2] == 16.0f && per_gpu[3] == 16.0f,
          "hierarchical: device loads %g %g %g %g", per_gpu[0], per_gpu[1], per_gpu[2],
          per_gpu[3]);
    check_consistent(&plan, "hierarchical");
    pk_eplb_plan_free(&plan);
}

/* One slot per device: packing is the identity, not the greedy order. */
static void test_one_slot_per_device(void)
{
    const float load[] = {1, 5, 3, 2};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 1, 4, 4, 1, 1, 4, &plan);
    CHECK(rc == 0, "one slot per device failed: %s", pikv_last_error());
    if (rc != 0) return;
    const int identity[] = {0, 1, 2, 3};
    CHECK(same_ints(plan.phy2log, identity, 4), "one slot per device: phy2log not identity");
    CHECK(same_ints(plan.log2phy, identity, 4), "one slot per device: log2phy not identity");
    pk_eplb_plan_free(&plan);
}

/* All-zero loads: every extra replica goes to the first expert of each node, and
 * packing keeps index order. Worked: 2 groups on 2 nodes, node 0 = e0,e1 gets
 * replicas e0,e1,e0,e0 in slots 0..3, node 1 likewise with e2,e3. */
static void test_all_zero(void)
{
    const float load[4] = {0};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 1, 4, 8, 2, 2, 4, &plan);
    CHECK(rc == 0, "all-zero loads failed: %s", pikv_last_error());
    if (rc != 0) return;
    const int phy2log[] = {0, 1, 0, 0, 2, 3, 2, 2};
    const int logcnt[] = {3, 1, 3, 1};
    CHECK(same_ints(plan.phy2log, phy2log, 8), "all zero: phy2log");
    CHECK(same_ints(plan.logcnt, logcnt, 4), "all zero: logcnt");
    check_consistent(&plan, "all zero");
    pk_eplb_plan_free(&plan);
}

/* One expert: alone in one slot, or replicated over every slot. With 4 slots on 2
 * devices the equal replicas alternate devices: ranks 0..3 sit in slots 0,2,1,3. */
static void test_one_expert(void)
{
    const float load[] = {8};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 1, 1, 1, 1, 1, 1, &plan);
    CHECK(rc == 0 && plan.phy2log[0] == 0 && plan.logcnt[0] == 1 && plan.max_replicas == 1 &&
              plan.log2phy[0] == 0,
          "one expert, one slot: %s", rc ? pikv_last_error() : "wrong plan");
    pk_eplb_plan_free(&plan);

    rc = pk_eplb_rebalance(load, 1, 1, 4, 1, 1, 2, &plan);
    CHECK(rc == 0, "one expert, 4 slots: %s", pikv_last_error());
    if (rc != 0) return;
    const int phy2log[] = {0, 0, 0, 0}, log2phy[] = {0, 2, 1, 3};
    CHECK(same_ints(plan.phy2log, phy2log, 4) && plan.logcnt[0] == 4,
          "one expert, 4 slots: phy2log/logcnt");
    CHECK(plan.max_replicas == 4 && same_ints(plan.log2phy, log2phy, 4),
          "one expert, 4 slots: log2phy");
    pk_eplb_plan_free(&plan);
}

/* Two layers whose largest replica counts differ (3 and 2): M = 3 and the second
 * layer's rows are padded with -1. Worked: layer 0 [10,1,1,1] gives e0 both extras
 * (10, then 5); its replicas 3.33,1,1,1,3.33,3.33 pack as p0,p5,p3 | p4,p1,p2.
 * Layer 1 [1,1,1,1] gives e0 then e1 an extra; loads .5,.5,1,1,.5,.5 pack as
 * p2,p0,p4 | p3,p1,p5. */
static void test_layers_padding(void)
{
    const float load[] = {10, 1, 1, 1, 1, 1, 1, 1};
    pk_eplb_plan plan;
    int rc = pk_eplb_rebalance(load, 2, 4, 6, 1, 1, 2, &plan);
    CHECK(rc == 0, "two layers failed: %s", pikv_last_error());
    if (rc != 0) return;
    const int phy2log[] = {0, 0, 3, 0, 1, 2, 2, 0, 0, 3, 1, 1};
    const int logcnt[] = {3, 1, 1, 1, 2, 2, 1, 1};
    const int log2phy[] = {0, 3, 1, 4, -1, -1, 5, -1, -1, 2, -1, -1,
                           1, 2, -1, 4, 5, -1, 0, -1, -1, 3, -1, -1};
    CHECK(same_ints(plan.phy2log, phy2log, 12), "two layers: phy2log");
    CHECK(same_ints(plan.logcnt, logcnt, 8), "two layers: logcnt");
    CHECK(plan.max_replicas == 3, "two layers: M = %d", plan.max_replicas);
    CHECK(same_ints(plan.log2phy, log2phy, 24), "two layers: log2phy");
    check_consistent(&plan, "two layers");
    pk_eplb_plan_free(&plan);
}

/* A larger pseudo-random case of each policy, checked for consistency. */
static void test_random_consistency(void)
{
    enum { LAYERS = 5, EXPERTS = 32, REPLICAS = 48, GPUS = 8 };
    static float load[LAYERS * EXPERTS];
    unsigned state = 12345;
    for (int i = 0; i < LAYERS * EXPERTS; i++) {
        state = state * 1103515245u + 12345u;
        load[i] = (float)((state >> 16) % 1000) / 7.0f;
    }
    const int node_counts[] = {2, 3}; /* 4 groups: hierarchical on 2 nodes, global on 3 */
    for (int k = 0; k < 2; k++) {
        pk_eplb_plan plan;
        int rc = pk_eplb_rebalance(load, LAYERS, EXPERTS, REPLICAS, 4, node_counts[k], GPUS,
                                   &plan);
        CHECK(rc == 0, "random case %d: %s", k, pikv_last_error());
        if (rc != 0) continue;
        check_consistent(&plan, k ? "random global" : "random hierarchical");
        pk_eplb_plan_free(&plan);
    }
}

/* Expect pk_eplb_rebalance to refuse its arguments with a message containing
 * `needle`, and to leave the plan empty. */
static void expect_refused(const float *load, int layers, int experts, int replicas,
                           int groups, int nodes, int gpus, const char *needle)
{
    pk_eplb_plan plan;
    pikv_clear_error();
    int rc = pk_eplb_rebalance(load, layers, experts, replicas, groups, nodes, gpus, &plan);
    CHECK(rc == -1, "accepted (L=%d E=%d R=%d G=%d N=%d D=%d), expected '%s'", layers, experts,
          replicas, groups, nodes, gpus, needle);
    CHECK(strstr(pikv_last_error(), needle) != NULL && !strchr(pikv_last_error(), '\n'),
          "message '%s' lacks '%s'", pikv_last_error(), needle);
    CHECK(!plan.phy2log && !plan.logcnt && !plan.log2phy, "refused plan not empty");
    if (rc == 0) pk_eplb_plan_free(&plan);
}

/* Every invalid argument is refused with a message naming it. */
static void test_invalid(void)
{
    const float six[] = {50, 5, 30, 10, 20, 5};
    expect_refused(six, 1, 6, 8, 3, 2, 3, "multiple of num_gpus");
    expect_refused(six, 1, 6, 8, 4, 2, 4, "multiple of num_groups");
    expect_refused(six, 1, 6, 4, 3, 2, 4, "at least num_experts");
    expect_refused(six, 1, 6, 6, 2, 2, 3, "num_gpus (3) must be a multiple of num_nodes (2)");
    expect_refused(six, 0, 6, 8, 3, 2, 4, "num_layers");
    expect_refused(six, 1, 0, 8, 3, 2, 4, "num_experts must be positive");
    expect_refused(six, 1, 6, 0, 3, 2, 4, "num_replicas must be positive");
    expect_refused(six, 1, 6, -8, 3, 2, 4, "num_replicas must be positive");
    expect_refused(six, 1, 6, 8, 0, 2, 4, "num_groups must be positive");
    expect_refused(six, 1, 6, 8, 3, 0, 4, "num_nodes must be positive");
    expect_refused(six, 1, 6, 8, 3, 2, 0, "num_gpus must be positive");
    expect_refused(NULL, 1, 6, 8, 3, 2, 4, "weight");
    const float negative[] = {1, 2, -3, 4};
    expect_refused(negative, 2, 2, 2, 1, 1, 1, "weight[1][0] = -3 is negative");
    const float not_finite[] = {1, NAN, 3, INFINITY};
    expect_refused(not_finite, 1, 4, 4, 1, 1, 1, "weight[0][1] = nan is not finite");
    expect_refused(not_finite + 2, 1, 2, 2, 1, 1, 1, "weight[0][1] = inf is not finite");
    CHECK(pk_eplb_rebalance(six, 1, 6, 8, 3, 2, 4, NULL) == -1, "NULL plan accepted");

    int a[8], b[8], c[8];
    CHECK(pk_eplb_replicate(six, 6, 5, a, b, c) == -1 &&
              strstr(pikv_last_error(), "5 replicas cannot hold 6 items"),
          "replicate: too few replicas accepted (%s)", pikv_last_error());
    CHECK(pk_eplb_replicate(six, 0, 5, a, b, c) == -1, "replicate: zero items accepted");
    CHECK(pk_eplb_replicate(negative, 4, 5, a, b, c) == -1 &&
              strstr(pikv_last_error(), "load[2]"),
          "replicate: negative load accepted (%s)", pikv_last_error());
    CHECK(pk_eplb_balanced_packing(six, 6, 4, a, b) == -1 &&
              strstr(pikv_last_error(), "6 items do not divide evenly into 4 packs"),
          "packing: uneven accepted (%s)", pikv_last_error());
    CHECK(pk_eplb_balanced_packing(six, 6, 0, a, b) == -1, "packing: zero packs accepted");
    CHECK(pk_eplb_balanced_packing(not_finite, 2, 1, a, b) == -1 &&
              strstr(pikv_last_error(), "weight[1] = nan"),
          "packing: NaN accepted (%s)", pikv_last_error());
}

/* The building blocks on their own: replicate's tie rule and ranks, packing's
 * order and tie rules. */
static void test_building_blocks(void)
{
    const float load[] = {6, 6, 2};
    int phy2log[6], rank[6], logcnt[3];
    int rc = pk_eplb_replicate(load, 3, 6, phy2log, rank, logcnt);
    /* shares 6,6,2 -> e0 (first); 3,6,2 -> e1; 3,3,2 -> e0; e0 now 2, e1 3, e2 2. */
    const int want_phy2log[] = {0, 1, 2, 0, 1, 0}, want_rank[] = {0, 0, 0, 1, 1, 2};
    const int want_logcnt[] = {3, 2, 1};
    CHECK(rc == 0 && same_ints(phy2log, want_phy2log, 6) && same_ints(rank, want_rank, 6) &&
              same_ints(logcnt, want_logcnt, 3),
          "replicate: wrong result");

    /* 4, 9, 4, 1, 9, 3 into 2 packs of 3: order 9(1), 9(4), 4(0), 4(2), 3(5), 1(3);
     * 1 -> p0, 4 -> p1, 0 -> p0 (tie), 2 -> p1, 5 -> p0 (13 = 13, tie), 3 -> p1. */
    const float weight[] = {4, 9, 4, 1, 9, 3};
    int pack[6], pack_rank[6];
    rc = pk_eplb_balanced_packing(weight, 6, 2, pack, pack_rank);
    const int want_pack[] = {0, 0, 1, 1, 1, 0}, want_pack_rank[] = {1, 0, 1, 2, 0, 2};
    CHECK(rc == 0 && same_ints(pack, want_pack, 6) && same_ints(pack_rank, want_pack_rank, 6),
          "balanced packing: wrong result");
}

/* Make each allocation fail in turn: every failure must be reported as out of
 * memory with nothing leaked (LeakSanitizer checks at exit) until the call
 * needs no more allocations than allowed. */
static void test_allocation_failures(void)
{
    const float load[] = {12, 4, 6, 10, 3, 3, 20, 2};
    int failures = 0, ok = 1;
    for (long n = 1; n < 100; n++) {
        pk_eplb_plan plan;
        pk_test_fail_alloc_after(n);
        int rc = pk_eplb_rebalance(load, 1, 8, 12, 4, 2, 4, &plan);
        pk_test_fail_alloc_after(0);
        if (rc == 0) {
            pk_eplb_plan_free(&plan);
            break;
        }
        failures++;
        ok &= strstr(pikv_last_error(), "out of memory") != NULL && !plan.phy2log;
    }
    CHECK(failures >= 10 && ok, "rebalance: %d allocation failures, reported right: %d",
          failures, ok);

    const char *json = "[{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1,"
                       " \"num_nodes\": 1, \"num_gpus\": 1}]";
    failures = 0;
    ok = 1;
    for (long n = 1; n < 100; n++) {
        pk_test_fail_alloc_after(n);
        char *out = pk_eplb_json(json, strlen(json));
        pk_test_fail_alloc_after(0);
        if (out) {
            pk_free(out);
            break;
        }
        failures++;
        ok &= strstr(pikv_last_error(), "out of memory") != NULL;
    }
    CHECK(failures >= 5 && ok, "json: %d allocation failures, reported right: %d", failures,
          ok);
}

/* Run pk_eplb_json on text and compare its output with `want`. */
static void expect_json(const char *text, const char *want)
{
    char *out = pk_eplb_json(text, strlen(text));
    CHECK(out && strcmp(out, want) == 0, "json: got %s\n  want %s",
          out ? out : pikv_last_error(), want);
    pk_free(out);
}

/* Expect pk_eplb_json to refuse text with a one-line message containing needle. */
static void expect_json_error(const char *text, const char *needle)
{
    pikv_clear_error();
    char *out = pk_eplb_json(text, strlen(text));
    CHECK(!out && strstr(pikv_last_error(), needle) && !strchr(pikv_last_error(), '\n'),
          "json %s: got '%s', expected '%s'", text, out ? out : pikv_last_error(), needle);
    pk_free(out);
}

/* The JSON front end: the worked example, a list, and clear messages. */
static void test_json(void)
{
    const char *example = "{\"weight\": [[50, 5, 30, 10, 20, 5]], \"num_replicas\": 8,"
                          " \"num_groups\": 3, \"num_nodes\": 2, \"num_gpus\": 4}";
    const char *example_out = "{\"phy2log\":[[0,1,0,5,4,3,2,2]],"
                              "\"log2phy\":[[[0,2],[1,-1],[6,7],[5,-1],[4,-1],[3,-1]]],"
                              "\"logcnt\":[[2,1,2,1,1,1]]}";
    expect_json(example, example_out);

    const char *list = "[{\"weight\": [[8]], \"num_replicas\": 1, \"num_groups\": 1,"
                       " \"num_nodes\": 1, \"num_gpus\": 1},"
                       " {\"num_gpus\": 4, \"num_nodes\": 2, \"num_groups\": 3,"
                       " \"num_replicas\": 8.0, \"weight\": [[50, 5, 30, 10, 20, 5]]}]\n";
    char want[512];
    snprintf(want, sizeof want,
             "[{\"phy2log\":[[0]],\"log2phy\":[[[0]]],\"logcnt\":[[1]]},%s]", example_out);
    expect_json(list, want);
    expect_json("[]", "[]");

    const char *tail = ", \"num_replicas\": 8, \"num_groups\": 3, \"num_nodes\": 2,"
                       " \"num_gpus\": 4}";
    char text[512];
    snprintf(text, sizeof text, "{\"weight\": [[1, 2, 3, 4, 5, 6], [1, 2]]%s", tail);
    expect_json_error(text, "weight[1] has 2 entries but weight[0] has 6");
    snprintf(text, sizeof text, "{\"weight\": []%s", tail);
    expect_json_error(text, "\"weight\" has no rows");
    snprintf(text, sizeof text, "{\"weight\": [[]]%s", tail);
    expect_json_error(text, "weight[0] is empty");
    snprintf(text, sizeof text, "{\"weight\": [[1, 2, \"3\", 4, 5, 6]]%s", tail);
    expect_json_error(text, "weight[0][2] must be a number, got a string");
    snprintf(text, sizeof text, "{\"weight\": [[1, 2, 3, 4, 5, -6]]%s", tail);
    expect_json_error(text, "weight[0][5] = -6 is negative");
    snprintf(text, sizeof text, "{\"weight\": [[1, 2, 3, 4, 5, 1e39]]%s", tail);
    expect_json_error(text, "weight[0][5] = 1e+39 does not fit in float32");
    snprintf(text, sizeof text, "{\"weight\": [1, 2]%s", tail);
    expect_json_error(text, "weight[0] must be a list of numbers, got a number");
    snprintf(text, sizeof text, "{\"weight\": {\"a\": 1}%s", tail);
    expect_json_error(text, "\"weight\" must be a list of rows of numbers, got an object");
    expect_json_error("{\"num_replicas\": 8, \"num_groups\": 3, \"num_nodes\": 2,"
                      " \"num_gpus\": 4}",
                      "missing key \"weight\"");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1,"
                      " \"num_nodes\": 1}",
                      "missing key \"num_gpus\"");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": 2.5, \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpus\": 1}",
                      "\"num_replicas\" must be an integer, got 2.5");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": \"2\", \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpus\": 1}",
                      "\"num_replicas\" must be an integer, got a string");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1e10,"
                      " \"num_nodes\": 1, \"num_gpus\": 1}",
                      "\"num_groups\" = 1e+10 is out of range");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpu\": 1}",
                      "unknown key \"num_gpu\"");
    expect_json_error("{\"weight\": [[1, 2]], \"num_replicas\": 3, \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpus\": 2}",
                      "num_replicas (3) must be a multiple of num_gpus (2)");
    expect_json_error("[{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpus\": 1}, 7]",
                      "item 1: expected an object");
    expect_json_error("[{\"weight\": [[1, 2]], \"num_replicas\": 2, \"num_groups\": 1,"
                      " \"num_nodes\": 1, \"num_gpus\": 0}]",
                      "item 0: num_gpus must be positive, got 0");
    expect_json_error("\"eplb\"", "expected an object");
    expect_json_error("{\"weight\": [[1, 2]],\n \"num_replicas\": 2,,\n}",
                      "invalid JSON near line 2, column");
    char deep[2100];
    memset(deep, '[', 1001);
    memset(deep + 1001, ']', 1001);
    deep[2002] = 0;
    expect_json_error(deep, "nested too deeply");
    expect_json_error("{} {}", "unexpected text after the JSON value at line 1, column 4");
    expect_json_error(" \n\t", "empty");
    expect_json_error("", "empty");
}

int main(void)
{
    test_worked_example();
    test_hierarchical_by_hand();
    test_one_slot_per_device();
    test_all_zero();
    test_one_expert();
    test_layers_padding();
    test_random_consistency();
    test_building_blocks();
    test_invalid();
    test_allocation_failures();
    test_json();
    return check_done("eplb");
}
