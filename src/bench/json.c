#include "bench/json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>

void pk_json_number(cJSON *o, const char *key, double v)
{
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

/* The nested layout groups a figure's three numbers; the flat one keeps a
 * row's keys one level deep, as its CSV columns are. */
void pk_json_summary(cJSON *o, const char *key, const pk_summary *s, pk_summary_layout layout)
{
    if (layout == PK_SUMMARY_NESTED) {
        cJSON *x = cJSON_AddObjectToObject(o, key);
        pk_json_number(x, "median", s->median);
        pk_json_number(x, "min", s->min);
        pk_json_number(x, "max", s->max);
        return;
    }
    char name[128];
    pk_json_number(o, key, s->median);
    snprintf(name, sizeof name, "%s_min", key);
    pk_json_number(o, name, s->min);
    snprintf(name, sizeof name, "%s_max", key);
    pk_json_number(o, name, s->max);
}
