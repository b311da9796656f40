/* The wall clock every timing in pikv reads. */
#include "pikv.h"

#include <time.h>

double pikv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
