/* The decision whether a speed ratio is a result, on hand-worked cases:
 * spreads that overlap or not, a single repetition, and load averages on
 * either side of the idle level (0.5 per core), the run's own threads
 * discounted from the load measured after it. */
#include "bench/noise.h"
#include "check.h"

static pk_summary spread(double min, double median, double max, int n)
{
    return (pk_summary){median, min, max, n};
}

int main(void)
{
    const pk_summary slow = spread(100, 105, 110, 5), fast = spread(120, 130, 140, 5);
    const pk_summary touching = spread(110, 115, 120, 5), inside = spread(101, 104, 109, 5);
    CHECK(!pk_spreads_overlap(&slow, &fast), "100..110 and 120..140 are apart");
    CHECK(!pk_spreads_overlap(&fast, &slow), "... in either order");
    CHECK(pk_spreads_overlap(&slow, &touching), "100..110 and 110..120 touch: overlap");
    CHECK(pk_spreads_overlap(&slow, &inside), "101..109 lies inside 100..110");
    CHECK(pk_spreads_overlap(&inside, &slow), "... in either order");

    /* 2 cores: idle below 1.0 of load from others. */
    const pk_machine_load idle = {0.2, 1.1, 2, 1};      /* after: 1.1 - 1 own thread = 0.1 */
    const pk_machine_load busy_before = {1.3, 1.2, 2, 1};
    const pk_machine_load busy_after = {0.4, 3.5, 2, 2}; /* others: 3.5 - 2 = 1.5 > 1.0 */
    const pk_machine_load own_load = {0.9, 2.9, 2, 2};   /* others: 0.9 after; 0.9 before: idle */
    CHECK(!pk_machine_busy(&idle), "load 0.2 before, 0.1 from others after, on 2 cores: idle");
    CHECK(pk_machine_busy(&busy_before), "load 1.3 before on 2 cores: busy");
    CHECK(pk_machine_busy(&busy_after), "1.5 from others after on 2 cores: busy");
    CHECK(!pk_machine_busy(&own_load), "the run's own 2 threads do not make the machine busy");
    CHECK(!pk_machine_busy(NULL), "no load measured: not busy");

    CHECK(pk_speed_judge(&fast, &slow, &idle) == PK_SPEED_SIGNIFICANT, "apart on an idle machine: a result");
    CHECK(pk_speed_judge(&fast, &slow, NULL) == PK_SPEED_SIGNIFICANT, "apart, load not measured: a result");
    CHECK(pk_speed_judge(&touching, &slow, &idle) == PK_SPEED_OVERLAP, "overlapping spreads: within noise");
    CHECK(pk_speed_judge(&fast, &slow, &busy_after) == PK_SPEED_BUSY_MACHINE, "apart on a busy machine: not a result");
    const pk_summary once_a = spread(200, 200, 200, 1), once_b = spread(100, 100, 100, 1);
    CHECK(pk_speed_judge(&once_a, &once_b, &idle) == PK_SPEED_ONE_SAMPLE, "one repetition each: no spread to judge");
    CHECK(pk_speed_judge(&fast, &once_b, &idle) == PK_SPEED_ONE_SAMPLE, "one repetition on one side");

    /* The 42x of the busy machine: medians 210 vs 5 tok/s, wide spreads on a loaded machine. */
    const pk_summary duo = spread(6, 210, 480, 3), none = spread(4, 5, 470, 3);
    const pk_machine_load loaded = {3.8, 4.1, 2, 2};
    CHECK(pk_speed_judge(&duo, &none, &loaded) == PK_SPEED_BUSY_MACHINE, "the 42x on a loaded machine");
    CHECK(pk_speed_judge(&duo, &none, &idle) == PK_SPEED_OVERLAP, "and its spreads overlap anyway");
    return check_done("noise");
}
