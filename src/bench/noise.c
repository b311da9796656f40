#include "bench/noise.h"

#include <stdio.h>

double pk_load_average(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return -1;
    double one = -1;
    if (fscanf(f, "%lf", &one) != 1) one = -1;
    fclose(f);
    return one;
}

int pk_machine_busy(const pk_machine_load *load)
{
    if (!load || load->cores < 1) return 0;
    const double idle = PK_IDLE_LOAD_PER_CORE * load->cores;
    /* After the run, the average still holds the run's own threads. */
    const double others_after = load->after - load->own_threads;
    return load->before > idle || others_after > idle;
}

int pk_spreads_overlap(const pk_summary *a, const pk_summary *b)
{
    return a->min <= b->max && b->min <= a->max;
}

pk_speed_verdict pk_speed_judge(const pk_summary *a, const pk_summary *b, const pk_machine_load *load)
{
    if (pk_machine_busy(load)) return PK_SPEED_BUSY_MACHINE;
    if (a->n < 2 || b->n < 2) return PK_SPEED_ONE_SAMPLE;
    if (pk_spreads_overlap(a, b)) return PK_SPEED_OVERLAP;
    return PK_SPEED_SIGNIFICANT;
}

const char *pk_speed_verdict_text(pk_speed_verdict v)
{
    switch (v) {
    case PK_SPEED_SIGNIFICANT: return "significant";
    case PK_SPEED_OVERLAP: return "within noise: the min..max spreads overlap";
    case PK_SPEED_ONE_SAMPLE: return "not significant: one repetition has no spread";
    case PK_SPEED_BUSY_MACHINE: return "not significant: the machine was busy (load average above idle)";
    }
    return "?";
}
