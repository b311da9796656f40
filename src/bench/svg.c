#include "bench/svg.h"
#include "util/error.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Canvas and plot area, in SVG user units. */
enum { WIDTH = 760, HEIGHT = 440, LEFT = 80, RIGHT = 220, TOP = 50, BOTTOM = 60 };

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                      "#9467bd", "#8c564b", "#e377c2", "#17becf"};

/* An axis: its range, rounded out to whole tick steps. */
typedef struct {
    double lo, hi, step;
} axis;

/* Round a range out to 1, 2 or 5 times a power of ten, about five ticks. */
static axis nice_axis(double lo, double hi)
{
    if (!(hi > lo)) {
        const double pad = lo != 0 ? fabs(lo) * 0.5 : 1.0;
        lo -= pad;
        hi += pad;
    }
    const double raw = (hi - lo) / 5, magnitude = pow(10, floor(log10(raw))), norm = raw / magnitude;
    const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
    return (axis){floor(lo / step + 1e-9) * step, ceil(hi / step - 1e-9) * step, step};
}

/* Digits after the point that show a tick step exactly enough. */
static int tick_decimals(double step)
{
    const int d = (int)ceil(-log10(step) - 1e-9);
    return d > 0 ? d : 0;
}

/* Write text with the characters XML reserves escaped. */
static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* The range of the finite values of every series along x or y. */
static void data_range(const pk_svg_series *series, int n_series, int along_y, double *lo, double *hi)
{
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int s = 0; s < n_series; s++)
        for (int i = 0; i < series[s].n; i++) {
            const double v = along_y ? series[s].y[i] : series[s].x[i];
            if (!isfinite(v) || !isfinite(along_y ? series[s].x[i] : series[s].y[i])) continue;
            if (v < *lo) *lo = v;
            if (v > *hi) *hi = v;
        }
    if (*lo > *hi) *lo = 0, *hi = 1;
}

/* Where a value falls on the canvas along x or along y. */
static double map_x(const axis *ax, double v)
{
    return LEFT + (v - ax->lo) / (ax->hi - ax->lo) * (WIDTH - RIGHT - LEFT);
}

static double map_y(const axis *ay, double v)
{
    return HEIGHT - BOTTOM - (v - ay->lo) / (ay->hi - ay->lo) * (HEIGHT - BOTTOM - TOP);
}

/* The value of tick i of an axis, or NaN past its end; a value that is zero
 * up to rounding prints as 0. */
static double tick(const axis *a, int i)
{
    const double v = a->lo + i * a->step;
    if (v > a->hi + a->step * 1e-6) return NAN;
    return fabs(v) < a->step * 1e-6 ? 0.0 : v;
}

/* Both axes: a grid line, a tick mark and a label at every tick, then the
 * axis lines and their titles. */
static void draw_axes(FILE *f, const axis *ax, const axis *ay, const char *x_label, const char *y_label)
{
    const int x0 = LEFT, x1 = WIDTH - RIGHT, y0 = HEIGHT - BOTTOM, y1 = TOP;
    for (int i = 0; !isnan(tick(ay, i)); i++) {
        const double v = tick(ay, i), y = map_y(ay, v);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#dddddd\"/>\n", x0, y, x1, y);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#333333\"/>\n", x0 - 5, y, x0, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\">%.*f</text>\n", x0 - 8, y + 4,
                tick_decimals(ay->step), v);
    }
    for (int i = 0; !isnan(tick(ax, i)); i++) {
        const double v = tick(ax, i), x = map_x(ax, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#333333\"/>\n", x, y0, x, y0 + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">%.*f</text>\n", x, y0 + 20,
                tick_decimals(ax->step), v);
    }
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333333\"/>\n", x0, y0, x1, y0);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333333\"/>\n", x0, y0, x0, y1);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">", (x0 + x1) / 2, HEIGHT - 15);
    put_escaped(f, x_label);
    fprintf(f, "</text>\n<text x=\"20\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\" "
               "transform=\"rotate(-90 20 %d)\">",
            (y0 + y1) / 2, (y0 + y1) / 2);
    put_escaped(f, y_label);
    fprintf(f, "</text>\n");
}

/* One series: its polyline, a marker per point, and its legend entry. */
static void draw_series(FILE *f, const pk_svg_series *s, int index, const axis *ax, const axis *ay)
{
    const char *color = palette[index % (int)(sizeof palette / sizeof *palette)];
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (int i = 0, first = 1; i < s->n; i++) {
        if (!isfinite(s->x[i]) || !isfinite(s->y[i])) continue;
        fprintf(f, "%s%.1f,%.1f", first ? "" : " ", map_x(ax, s->x[i]), map_y(ay, s->y[i]));
        first = 0;
    }
    fprintf(f, "\"/>\n");
    for (int i = 0; i < s->n; i++)
        if (isfinite(s->x[i]) && isfinite(s->y[i]))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", map_x(ax, s->x[i]),
                    map_y(ay, s->y[i]), color);
    const int lx = WIDTH - RIGHT + 20, ly = TOP + 10 + 22 * index;
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"/>\n", lx, ly,
            lx + 24, ly, color);
    /* the legend column holds about 26 characters; a longer name is cut there
     * (at a character boundary) and its full text kept as a tooltip */
    enum { LEGEND_CHARS = 26 };
    size_t cut = strlen(s->name);
    if (cut > LEGEND_CHARS) {
        cut = LEGEND_CHARS - 3;
        while (cut > 0 && ((unsigned char)s->name[cut] & 0xC0) == 0x80) cut--;
    }
    char shown[LEGEND_CHARS + 1];
    snprintf(shown, sizeof shown, "%.*s%s", (int)cut, s->name, cut < strlen(s->name) ? "..." : "");
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\"><title>", lx + 30, ly + 4);
    put_escaped(f, s->name);
    fprintf(f, "</title>");
    put_escaped(f, shown);
    fprintf(f, "</text>\n");
}

/* Draw the chart into a memory stream: frame, title, axes, then the series. */
char *pk_svg_line_chart(const char *title, const char *x_label, const char *y_label, const pk_svg_series *series,
                        int n_series)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        pk_fail("svg: cannot open a memory stream: %s", strerror(errno));
        return NULL;
    }
    double xlo, xhi, ylo, yhi;
    data_range(series, n_series, 0, &xlo, &xhi);
    data_range(series, n_series, 1, &ylo, &yhi);
    if (ylo > 0) ylo = 0;
    const axis ax = nice_axis(xlo, xhi), ay = nice_axis(ylo, yhi);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\">\n",
            WIDTH, HEIGHT, WIDTH, HEIGHT);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">", WIDTH / 2);
    put_escaped(f, title);
    fprintf(f, "</text>\n");
    draw_axes(f, &ax, &ay, x_label, y_label);
    for (int s = 0; s < n_series; s++) draw_series(f, &series[s], s, &ax, &ay);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        free(text);
        pk_fail("svg: cannot write the chart");
        return NULL;
    }
    return text;
}
