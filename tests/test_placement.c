/* EPLB placement of decode attention on workers: every entry read exactly
 * once, the balance it reaches on a DuoAttention cache against an equal count
 * of heads per worker, and attention over placed slices (replicas included)
 * equal to attention computed in one piece. */
#include "check.h"
#include "eval/tasks.h"
#include "router/placement.h"
#include "engine/session.h"
#include "pikv.h"

#include <math.h>
#include <string.h>

#define MODEL "models/pikv-ref-14m"

/* Every entry of every head lands in exactly one item. */
static int covers_exactly(const pk_placement *p, const int *len, int H)
{
    int ok = 1;
    for (int h = 0; h < H; h++) {
        char *seen = calloc((size_t)len[h] + 1, 1);
        for (int i = 0; i < p->n_items; i++) {
            const pk_work_item *it = &p->items[i];
            if (it->head != h) continue;
            for (int j = it->start; j < it->start + it->count; j++) ok &= j < len[h] && !seen[j]++;
        }
        for (int j = 0; j < len[h]; j++) ok &= seen[j] == 1;
        free(seen);
    }
    return ok;
}

static void check_hand_cases(void)
{
    /* Two workers, heads 2048, 320, 320, 320, 2048, 320: an equal count puts
     * 2688 and 2688 (lucky); heads 2048, 2048, 2048, 320, 320, 320 give 6144
     * against 960: max/mean = 6144 / 3552 = 1.73. EPLB splits the long heads. */
    const int skew[6] = {2048, 2048, 2048, 320, 320, 320};
    pk_placement eq = {0}, ep = {0};
    CHECK(pk_place_heads(skew, 6, 2, PK_PLACE_EQUAL_COUNT, &eq) == 0 && eq.load[0] == 6144 && eq.load[1] == 960,
          "equal count: %ld / %ld", eq.load[0], eq.load[1]);
    CHECK(fabs(pk_placement_imbalance(&eq) - 6144.0 / 3552.0) < 1e-9, "equal-count imbalance");
    CHECK(pk_place_heads(skew, 6, 2, PK_PLACE_EPLB, &ep) == 0 && covers_exactly(&ep, skew, 6), "eplb covers");
    CHECK(pk_placement_imbalance(&ep) <= 1.10, "eplb imbalance %.3f", pk_placement_imbalance(&ep));
    for (int W = 1; W <= 9; W++) {
        CHECK(pk_place_heads(skew, 6, W, PK_PLACE_EPLB, &ep) == 0 && covers_exactly(&ep, skew, 6),
              "eplb covers every entry once with %d workers", W);
        CHECK(pk_place_heads(skew, 6, W, PK_PLACE_EQUAL_COUNT, &eq) == 0 && covers_exactly(&eq, skew, 6),
              "equal count covers every entry once with %d workers", W);
    }
    const int empty[3] = {0, 0, 5};
    CHECK(pk_place_heads(empty, 3, 4, PK_PLACE_EPLB, &ep) == 0 && covers_exactly(&ep, empty, 3), "empty heads");
    CHECK(pk_place_heads(skew, 6, 0, PK_PLACE_EPLB, &ep) != 0, "zero workers is an error");
    pk_placement_free(&eq);
    pk_placement_free(&ep);
}

/* On a duo:0.75 cache at 2,000 tokens: EPLB's balance for 2 and 8 workers
 * against an equal count, and decode logits with placed workers equal to the
 * logits without workers. */
static void check_duo_cache(void)
{
    pikv_model *m = pikv_model_load(MODEL);
    pikv_tokenizer *tok = pikv_tokenizer_load(MODEL);
    pk_haystack h;
    pk_task t;
    if (!m || !tok || pk_haystack_load(&h, tok, "data/haystack.txt") ||
        pk_task_make(&h, PK_TASK_PASSKEY, 1, 2000, 0.5, 9, &t)) {
        CHECK(0, "setup: %s", pikv_last_error());
        return;
    }
    const pikv_config *c = pikv_model_config(m);
    const int V = c->vocab_size, H = c->n_head;
    pikv_press *duo = pikv_press_new("duo:0.75", m, MODEL);
    pikv_session *s = pikv_session_new(m, 2);
    pikv_prefill(s, t.context, t.n_context, duo, NULL);
    for (int W = 2; W <= 8; W += 6) {
        double worst_eplb = 0, worst_equal = 0;
        for (int l = 0; l < c->n_layer; l++) {
            int len[64];
            for (int hh = 0; hh < H; hh++) len[hh] = pikv_session_kv_len(s, l, hh);
            pk_placement p = {0};
            pk_place_heads(len, H, W, PK_PLACE_EPLB, &p);
            worst_eplb = fmax(worst_eplb, pk_placement_imbalance(&p));
            pk_place_heads(len, H, W, PK_PLACE_EQUAL_COUNT, &p);
            worst_equal = fmax(worst_equal, pk_placement_imbalance(&p));
            pk_placement_free(&p);
        }
        printf("duo:0.75 at 2000 tokens, %d workers: worst layer max/mean load %.3f with EPLB, %.3f equal count\n", W,
               worst_eplb, worst_equal);
        CHECK(worst_eplb <= 1.10, "EPLB with %d workers: max/mean %.3f > 1.10", W, worst_eplb);
    }
    /* Logits through placed workers equal the unplaced ones, for a few steps. */
    pikv_session_mark(s);
    float *ref = malloc((size_t)V * 8 * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
    int32_t ids[8] = {11, 200, 3000, 42, 7, 999, 1234, 5};
    for (int i = 0; i < 8; i++) pikv_forward(s, &ids[i], 1, ref + (size_t)i * V, 0);
    for (int W = 2; W <= 8; W += 3)
        for (int balanced = 0; balanced < 2; balanced++) {
            pikv_session_rewind(s);
            pikv_session_set_workers(s, W, balanced);
            double worst = 0;
            for (int i = 0; i < 8; i++) {
                pikv_forward(s, &ids[i], 1, got, 0);
                worst = fmax(worst, rel_l2(got, ref + (size_t)i * V, V));
            }
            CHECK(worst < 1e-5, "%d workers, %s: logits vs one piece %.3g", W, balanced ? "eplb" : "equal count",
                  worst);
            pikv_session_set_workers(s, 0, 0);
        }
    free(ref);
    free(got);
    pikv_session_free(s);
    pikv_press_free(duo);
    pk_task_free(&t);
    pk_haystack_free(&h);
    pikv_tokenizer_free(tok);
    pikv_model_free(m);
}

int main(void)
{
    check_hand_cases();
    check_duo_cache();
    return check_done("placement");
}
