/* JSON in and out for `pikv eplb`: parse the problem(s) with cJSON, run
 * pk_eplb_rebalance on each, and print the plans back as JSON. Every complaint
 * names the key, row or list item at fault. */
#include "router/eplb.h"
#include "util/error.h"
#include "util/file.h"
#include "util/mem.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const problem_keys[] = {
    "weight", "num_replicas", "num_groups", "num_nodes", "num_gpus",
};

/* A word for the kind of a JSON value, for messages ("a string", "null"). */
static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    return "null";
}

/* Copy a key from the input into buf for a message: at most cap - 1 bytes, with
 * control characters replaced so that the message stays on one line. */
static const char *printable_key(const char *key, char *buf, size_t cap)
{
    size_t n = 0;
    for (; key[n] && n + 1 < cap; n++)
        buf[n] = (unsigned char)key[n] < 0x20 || key[n] == 0x7f ? '?' : key[n];
    buf[n] = '\0';
    return buf;
}

/* Refuse keys other than the five a problem has, so that a misspelt key is
 * reported instead of silently ignored. */
static int check_keys(const cJSON *problem)
{
    const cJSON *member;
    cJSON_ArrayForEach(member, problem) {
        int known = 0;
        for (size_t k = 0; k < sizeof problem_keys / sizeof *problem_keys; k++)
            if (strcmp(member->string, problem_keys[k]) == 0) known = 1;
        if (!known) {
            char key[64];
            return pk_fail("unknown key \"%s\" (expected weight, num_replicas, num_groups, "
                           "num_nodes, num_gpus)",
                           printable_key(member->string, key, sizeof key));
        }
    }
    return 0;
}

/* Read problem[key], which must be an integer that fits in an int. Whether it is
 * positive and divides as it should is pk_eplb_rebalance's to say. */
static int read_integer(const cJSON *problem, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(problem, key);
    if (!v) return pk_fail("missing key \"%s\"", key);
    if (!cJSON_IsNumber(v)) return pk_fail("\"%s\" must be an integer, got %s", key, json_kind(v));
    double d = v->valuedouble;
    if (d != floor(d)) return pk_fail("\"%s\" must be an integer, got %g", key, d);
    if (d < INT_MIN || d > INT_MAX) return pk_fail("\"%s\" = %g is out of range", key, d);
    *out = (int)d;
    return 0;
}

/* Read problem["weight"], a non-empty list of equally long, non-empty lists of
 * numbers, into a row-major float32 matrix allocated with pk_malloc. */
static int read_weight(const cJSON *problem, float **weight, int *num_layers, int *num_experts)
{
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(problem, "weight");
    if (!rows) return pk_fail("missing key \"weight\"");
    if (!cJSON_IsArray(rows))
        return pk_fail("\"weight\" must be a list of rows of numbers, got %s", json_kind(rows));
    int layers = cJSON_GetArraySize(rows);
    if (layers == 0) return pk_fail("\"weight\" has no rows (no layers)");
    const cJSON *first = rows->child;
    if (!cJSON_IsArray(first))
        return pk_fail("weight[0] must be a list of numbers, got %s", json_kind(first));
    int experts = cJSON_GetArraySize(first);
    if (experts == 0) return pk_fail("weight[0] is empty (no experts)");

    float *matrix = pk_malloc_array((size_t)layers * (size_t)experts, sizeof *matrix,
                                    "EPLB weight matrix");
    if (!matrix) return -1;
    int l = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows) {
        if (!cJSON_IsArray(row)) {
            pk_free(matrix);
            return pk_fail("weight[%d] must be a list of numbers, got %s", l, json_kind(row));
        }
        int n = cJSON_GetArraySize(row);
        if (n != experts) {
            pk_free(matrix);
            return pk_fail("weight[%d] has %d entries but weight[0] has %d (rows must have "
                           "one load per expert)", l, n, experts);
        }
        int e = 0;
        const cJSON *cell;
        cJSON_ArrayForEach(cell, row) {
            if (!cJSON_IsNumber(cell)) {
                pk_free(matrix);
                return pk_fail("weight[%d][%d] must be a number, got %s", l, e, json_kind(cell));
            }
            float load = (float)cell->valuedouble;
            if (isfinite(cell->valuedouble) && !isfinite(load)) {
                pk_free(matrix);
                return pk_fail("weight[%d][%d] = %g does not fit in float32", l, e,
                               cell->valuedouble);
            }
            matrix[(size_t)l * (size_t)experts + (size_t)e] = load;
            e++;
        }
        l++;
    }
    *weight = matrix;
    *num_layers = layers;
    *num_experts = experts;
    return 0;
}

/* Append rows of ints as JSON lists of numbers to list; NULL-safe on list. */
static int append_rows(cJSON *list, const int *values, int num_rows, int row_len)
{
    if (!list) return -1;
    for (int r = 0; r < num_rows; r++) {
        cJSON *row = cJSON_CreateIntArray(values + (size_t)r * (size_t)row_len, row_len);
        if (!row || !cJSON_AddItemToArray(list, row)) {
            cJSON_Delete(row);
            return -1;
        }
    }
    return 0;
}

/* The JSON object for one plan: phy2log [L][R], log2phy [L][E][M], logcnt [L][E]. */
static cJSON *plan_to_json(const pk_eplb_plan *plan)
{
    cJSON *out = cJSON_CreateObject();
    cJSON *phy2log = cJSON_AddArrayToObject(out, "phy2log");
    cJSON *log2phy = cJSON_AddArrayToObject(out, "log2phy");
    cJSON *logcnt = cJSON_AddArrayToObject(out, "logcnt");
    int ok = append_rows(phy2log, plan->phy2log, plan->num_layers, plan->num_replicas) == 0 &&
             append_rows(logcnt, plan->logcnt, plan->num_layers, plan->num_experts) == 0;
    size_t layer_size = (size_t)plan->num_experts * (size_t)plan->max_replicas;
    for (int l = 0; ok && l < plan->num_layers; l++) {
        cJSON *layer = cJSON_CreateArray();
        ok = append_rows(layer, plan->log2phy + (size_t)l * layer_size, plan->num_experts,
                         plan->max_replicas) == 0 &&
             cJSON_AddItemToArray(log2phy, layer);
        if (!ok) cJSON_Delete(layer);
    }
    if (ok) return out;
    cJSON_Delete(out);
    pk_fail("out of memory building the EPLB JSON output");
    return NULL;
}

/* Solve one problem object and return its plan as JSON. */
static cJSON *solve_problem(const cJSON *problem)
{
    if (!cJSON_IsObject(problem)) {
        pk_fail("expected an object with \"weight\", \"num_replicas\", \"num_groups\", "
                "\"num_nodes\", \"num_gpus\", got %s", json_kind(problem));
        return NULL;
    }
    int replicas = 0, groups = 0, nodes = 0, gpus = 0, layers = 0, experts = 0;
    float *weight = NULL;
    if (check_keys(problem) != 0 || read_weight(problem, &weight, &layers, &experts) != 0)
        return NULL;
    pk_eplb_plan plan;
    cJSON *out = NULL;
    if (read_integer(problem, "num_replicas", &replicas) == 0 &&
        read_integer(problem, "num_groups", &groups) == 0 &&
        read_integer(problem, "num_nodes", &nodes) == 0 &&
        read_integer(problem, "num_gpus", &gpus) == 0 &&
        pk_eplb_rebalance(weight, layers, experts, replicas, groups, nodes, gpus, &plan) == 0) {
        out = plan_to_json(&plan);
        pk_eplb_plan_free(&plan);
    }
    pk_free(weight);
    return out;
}

/* Solve every problem of a list; a failure names the item (counting from 0). */
static cJSON *solve_list(const cJSON *problems)
{
    cJSON *output = cJSON_CreateArray();
    if (!output) {
        pk_fail("out of memory building the EPLB JSON output");
        return NULL;
    }
    int item = 0;
    const cJSON *problem;
    cJSON_ArrayForEach(problem, problems) {
        cJSON *plan = solve_problem(problem);
        if (!plan) {
            pk_fail_prefix("item %d", item);
            cJSON_Delete(output);
            return NULL;
        }
        cJSON_AddItemToArray(output, plan);
        item++;
    }
    return output;
}

/* Report a parse failure at byte offset `at` of text as "WHAT line L, column C". */
static int fail_at(const char *text, size_t at, const char *what)
{
    int line = 1, column = 1;
    for (size_t i = 0; i < at; i++) {
        if (text[i] == '\n') {
            line++;
            column = 1;
        } else {
            column++;
        }
    }
    return pk_fail("%s line %d, column %d", what, line, column);
}

/* The offset of the first byte at or after `from` that is not JSON whitespace
 * (len when there is none). */
static size_t skip_whitespace(const char *text, size_t from, size_t len)
{
    while (from < len && (text[from] == ' ' || text[from] == '\t' || text[from] == '\r' ||
                          text[from] == '\n'))
        from++;
    return from;
}

/* Parse the whole text (one JSON value and nothing after it), solve the object
 * or each object of the list, and print the result on one line. */
char *pk_eplb_json(const char *text, size_t len)
{
    if (!text) {
        pk_fail("EPLB: NULL JSON text");
        return NULL;
    }
    if (skip_whitespace(text, 0, len) == len) {
        pk_fail("no JSON in the input (it is empty)");
        return NULL;
    }
    const char *end = NULL;
    cJSON *input = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!input) {
        const char *reason = pk_json_error_reason(text, len);
        if (strcmp(reason, "invalid JSON") != 0) pk_fail("EPLB input: %s", reason);
        else fail_at(text, end ? (size_t)(end - text) : 0, "invalid JSON near");
        return NULL;
    }
    size_t after = skip_whitespace(text, (size_t)(end - text), len);
    if (after < len) {
        fail_at(text, after, "unexpected text after the JSON value at");
        cJSON_Delete(input);
        return NULL;
    }

    cJSON *output = cJSON_IsArray(input) ? solve_list(input) : solve_problem(input);
    cJSON_Delete(input);
    if (!output) return NULL;

    char *printed = cJSON_PrintUnformatted(output);
    cJSON_Delete(output);
    if (!printed) {
        pk_fail("out of memory printing the EPLB JSON output");
        return NULL;
    }
    char *result = pk_strdup(printed, "EPLB JSON output");
    cJSON_free(printed);
    return result;
}
