#include "press/duo_pattern.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void pk_duo_pattern_free(pk_duo_pattern *p)
{
    pk_free(p->alpha);
    memset(p, 0, sizeof *p);
}

static int is_separator(char c) { return c == '\t' || c == ' ' || c == '\r'; }

/* Count the fields of one line (separated by tabs or spaces). */
static int count_fields(const char *line, const char *end)
{
    int n = 0, in_field = 0;
    for (const char *c = line; c < end; c++) {
        int sep = is_separator(*c);
        if (!sep && !in_field) n++;
        in_field = !sep;
    }
    return n;
}

int pk_duo_pattern_parse(const char *text, size_t len, const char *name, pk_duo_pattern *p)
{
    memset(p, 0, sizeof *p);
    /* First pass: the shape, every row with the same number of heads. */
    int rows = 0, cols = -1;
    for (const char *line = text, *end = text + len; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *stop = nl ? nl : end;
        int n = count_fields(line, stop);
        if (n > 0) {
            if (memchr(line, '\0', (size_t)(stop - line))) return pk_fail("%s: line %d holds a NUL byte", name, rows + 1);
            if (cols >= 0 && n != cols)
                return pk_fail("%s: row %d has %d values, row 1 has %d (one column per head)", name, rows + 1, n, cols);
            cols = n;
            rows++;
        }
        line = nl ? nl + 1 : end;
    }
    if (rows == 0) return pk_fail("%s: no rows (expected one row of gate values per layer)", name);
    if ((size_t)rows * (size_t)cols > (1u << 24)) return pk_fail("%s: %d x %d heads is implausibly large", name, rows, cols);
    p->alpha = pk_malloc_array((size_t)rows * (size_t)cols, sizeof *p->alpha, "duo pattern");
    if (!p->alpha) return -1;
    p->n_layer = rows;
    p->n_head = cols;
    /* Second pass: the values. */
    int r = 0;
    for (const char *line = text, *end = text + len; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *stop = nl ? nl : end;
        if (count_fields(line, stop) > 0) {
            const char *c = line;
            for (int h = 0; h < cols; h++) {
                while (c < stop && is_separator(*c)) c++;
                char field[64];
                size_t n = 0;
                while (c + n < stop && !is_separator(c[n])) n++;
                if (n >= sizeof field) {
                    pk_duo_pattern_free(p);
                    return pk_fail("%s: row %d, column %d: value too long", name, r + 1, h + 1);
                }
                memcpy(field, c, n);
                field[n] = '\0';
                char *fend;
                errno = 0;
                double v = strtod(field, &fend);
                if (fend == field || *fend || !isfinite(v)) {
                    pk_fail("%s: row %d, column %d: '%s' is not a number", name, r + 1, h + 1, field);
                    pk_duo_pattern_free(p);
                    return -1;
                }
                p->alpha[r * cols + h] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
                c += n;
            }
            r++;
        }
        line = nl ? nl + 1 : end;
    }
    return 0;
}

/* Read sink_size and recent_size from a pattern's config.json. */
static int load_config(const char *path, pk_duo_pattern *p)
{
    cJSON *root = pk_read_json(path, PK_MAX_JSON_BYTES);
    if (!root) return -1;
    const char *keys[2] = {"sink_size", "recent_size"};
    int *dst[2] = {&p->sink, &p->recent};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (i ? 1 : 0) ||
            v->valuedouble > 1e6) {
            cJSON_Delete(root);
            return pk_fail("%s: \"%s\" must be an integer >= %d", path, keys[i], i ? 1 : 0);
        }
        *dst[i] = (int)v->valuedouble;
    }
    cJSON_Delete(root);
    return 0;
}

int pk_duo_pattern_load(const char *dir, pk_duo_pattern *p)
{
    char tsv[1024], cfg[1024];
    memset(p, 0, sizeof *p);
    if (pk_join_path(tsv, sizeof tsv, dir, "full_attention_heads.tsv") ||
        pk_join_path(cfg, sizeof cfg, dir, "config.json"))
        return -1;
    size_t len;
    char *text = pk_read_file(tsv, PK_MAX_JSON_BYTES, &len);
    if (!text) return -1;
    int rc = pk_duo_pattern_parse(text, len, tsv, p);
    pk_free(text);
    if (rc) return -1;
    if (!pk_path_exists(cfg)) {
        pk_duo_pattern_free(p);
        return pk_fail("%s: missing (a pattern needs sink_size and recent_size beside its gate values)", cfg);
    }
    if (load_config(cfg, p)) {
        pk_duo_pattern_free(p);
        return -1;
    }
    return 0;
}

int pk_duo_pattern_save(const char *dir, const pk_duo_pattern *p)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return pk_fail("%s: cannot create: %s", dir, strerror(errno));
    char path[1024];
    size_t cap = (size_t)p->n_layer * ((size_t)p->n_head * 24 + 2) + 1;
    char *text = pk_malloc(cap, "duo pattern text");
    if (!text) return -1;
    size_t n = 0;
    for (int l = 0; l < p->n_layer; l++)
        for (int h = 0; h < p->n_head; h++)
            n += (size_t)snprintf(text + n, cap - n, "%.9e%c", p->alpha[l * p->n_head + h],
                                  h + 1 < p->n_head ? '\t' : '\n');
    int rc = pk_join_path(path, sizeof path, dir, "full_attention_heads.tsv") || pk_write_file_atomic(path, text, n);
    if (rc == 0) {
        n = (size_t)snprintf(text, cap, "{\n  \"sink_size\": %d,\n  \"recent_size\": %d\n}\n", p->sink, p->recent);
        rc = pk_join_path(path, sizeof path, dir, "config.json") || pk_write_file_atomic(path, text, n);
    }
    pk_free(text);
    return rc ? -1 : 0;
}

typedef struct {
    float alpha;
    int index;
} ranked_head;

static int by_alpha_then_index(const void *a, const void *b)
{
    const ranked_head *x = a, *y = b;
    if (x->alpha != y->alpha) return x->alpha < y->alpha ? -1 : 1;
    return x->index - y->index;
}

int pk_duo_pattern_select(const pk_duo_pattern *p, double ratio, unsigned char *streaming)
{
    const int n = p->n_layer * p->n_head;
    const int n_stream = (int)floor(ratio * n + 0.5);
    ranked_head *heads = pk_malloc_array((size_t)n, sizeof *heads, "duo head ranking");
    if (!heads) return -1;
    for (int i = 0; i < n; i++) heads[i] = (ranked_head){p->alpha[i], i};
    qsort(heads, (size_t)n, sizeof *heads, by_alpha_then_index);
    memset(streaming, 0, (size_t)n);
    for (int i = 0; i < n_stream && i < n; i++) streaming[heads[i].index] = 1;
    pk_free(heads);
    return 0;
}
