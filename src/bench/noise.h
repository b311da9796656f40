/* Telling a speed difference from the noise of a shared machine.
 *
 * On a machine where other processes compete for the cores, timings of
 * repeated runs spread widely and drift, and a ratio of two medians can be
 * anything (a busy machine once showed a "42x speed improvement" that was not
 * there). A ratio is reported as a result only when the machine looked idle
 * and the repetitions of the two measurements do not overlap. */
#ifndef PIKV_BENCH_NOISE_H
#define PIKV_BENCH_NOISE_H

#include "bench/stats.h"

/* The 1-minute load average before and after a run, the cores, and the
 * threads the run itself used (its own share of the load after it). */
typedef struct {
    double before, after;
    int cores, own_threads;
} pk_machine_load;

/* Above this load per core (other processes' runnable threads, averaged over
 * a minute) the machine is busy: with 0.5, half the cores were taken by others. */
#define PK_IDLE_LOAD_PER_CORE 0.5

typedef enum {
    PK_SPEED_SIGNIFICANT,    /* idle machine, spreads apart: the ratio is a result */
    PK_SPEED_OVERLAP,        /* the min..max spreads overlap */
    PK_SPEED_ONE_SAMPLE,     /* a single repetition has no spread to judge by */
    PK_SPEED_BUSY_MACHINE,   /* the load average was above the idle level */
} pk_speed_verdict;

/* Read the 1-minute load average from /proc/loadavg; -1 when unavailable. */
double pk_load_average(void);
/* 1 when other processes loaded the machine above PK_IDLE_LOAD_PER_CORE per core
 * before the run or (beyond the run's own threads) after it. */
int pk_machine_busy(const pk_machine_load *load);
/* 1 when [a.min, a.max] and [b.min, b.max] overlap. */
int pk_spreads_overlap(const pk_summary *a, const pk_summary *b);
/* Whether the ratio of a's and b's medians can be reported as a result;
 * load may be NULL (not measured). */
pk_speed_verdict pk_speed_judge(const pk_summary *a, const pk_summary *b, const pk_machine_load *load);
/* A short phrase for a verdict other than PK_SPEED_SIGNIFICANT, e.g. "within
 * noise: the spreads overlap". */
const char *pk_speed_verdict_text(pk_speed_verdict v);

#endif
