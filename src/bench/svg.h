/* Line charts as hand-written SVG: the plots of `pikv compare --detailed`. */
#ifndef PIKV_BENCH_SVG_H
#define PIKV_BENCH_SVG_H

/* One line: n points (x[i], y[i]); NaN values are left out. */
typedef struct {
    const char *name;
    const double *x, *y;
    int n;
} pk_svg_series;

/* A chart with a title, both axes with ticks and labels, one polyline per
 * series (with a marker at each point) and a legend. The y axis starts at 0
 * when every value is positive, so that differences are not magnified.
 * Returns the SVG text (free with pikv_free), or NULL with an error set. */
char *pk_svg_line_chart(const char *title, const char *x_label, const char *y_label, const pk_svg_series *series,
                        int n_series);

#endif
