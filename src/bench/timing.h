/* Timing several methods on a shared machine: every repetition runs each
 * method once, in an order rotated by one from the last repetition, so that
 * drift (other work, clock changes, a warming cache) does not favour the
 * method that always runs first. Used by `pikv bench` and `pikv compare`. */
#ifndef PIKV_BENCH_TIMING_H
#define PIKV_BENCH_TIMING_H

#include "bench/stats.h"

typedef struct {
    int n_methods, reps;
    int n_measures;  /* figures one run yields (seconds, tokens/s, ...) */
    /* Run method `method` once, in repetition `rep`, and write its n_measures
     * figures to measures[0..n_measures). Returns 0, or -1 with the error set. */
    int (*run)(int method, int rep, double *measures, void *ctx);
    /* Called after each repetition (may be NULL), e.g. for a progress line. */
    void (*repetition_done)(int rep, void *ctx);
    void *ctx;
} pk_rotated_timing;

/* Run every method reps times in rotated order, then summarise each method's
 * samples of each measure: out[method * n_measures + measure]. Stops at the
 * first failed run and returns -1 (its error stands). */
int pk_time_rotated(const pk_rotated_timing *t, pk_summary *out);

#endif
