/* Summaries of repeated measurements: the median and the spread. */
#ifndef PIKV_BENCH_STATS_H
#define PIKV_BENCH_STATS_H

typedef struct {
    double median, min, max;
    int n;
} pk_summary;

/* Summarise n samples (the array is sorted in place). */
pk_summary pk_summarize(double *samples, int n);

#endif
