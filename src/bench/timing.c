#include "bench/timing.h"
#include "util/error.h"
#include "util/mem.h"

/* Samples are kept as [method][measure][rep], so that each summary reads one
 * contiguous run of reps values. */
int pk_time_rotated(const pk_rotated_timing *t, pk_summary *out)
{
    const int n = t->n_methods, m = t->n_measures, reps = t->reps;
    if (n < 1 || m < 1 || reps < 1)
        return pk_fail("timing: %d methods, %d measures, %d repetitions (each at least 1)", n, m, reps);
    double *samples = pk_malloc_array((size_t)n * (size_t)m * (size_t)reps, sizeof *samples, "timings");
    double *measures = pk_malloc_array((size_t)m, sizeof *measures, "timings");
    int rc = -1;
    if (!samples || !measures) goto done;
    for (int rep = 0; rep < reps; rep++) {
        for (int k = 0; k < n; k++) {
            const int method = (rep + k) % n;
            if (t->run(method, rep, measures, t->ctx)) goto done;
            for (int j = 0; j < m; j++) samples[((size_t)method * m + j) * reps + rep] = measures[j];
        }
        if (t->repetition_done) t->repetition_done(rep, t->ctx);
    }
    for (int i = 0; i < n * m; i++) out[i] = pk_summarize(samples + (size_t)i * reps, reps);
    rc = 0;
done:
    pk_free(measures);
    pk_free(samples);
    return rc;
}
