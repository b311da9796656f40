#include "bench/stats.h"

#include <stdlib.h>

static int ascending(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

pk_summary pk_summarize(double *samples, int n)
{
    pk_summary s = {0, 0, 0, n};
    if (n <= 0) return s;
    qsort(samples, (size_t)n, sizeof *samples, ascending);
    s.min = samples[0];
    s.max = samples[n - 1];
    s.median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
    return s;
}
