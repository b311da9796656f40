#include "bench/compare.h"
#include "bench/timing.h"
#include "engine/session.h"
#include "kv/kv_type.h"
#include "util/error.h"
#include "util/mem.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *const pk_sweep_names[PK_SWEEP_COUNT] = {"ratio", "experts", "context", "kv_type"};

/* The values the detailed run sweeps (besides the main setting, always included). */
static const double sweep_ratios[] = {0.3, 0.5, 0.7, 0.9};
static const int sweep_experts[] = {2, 4, 8};
static const int sweep_contexts[] = {512, 1024}; /* and the longest that fits */
/* f32 first: it is the KV-type sweep's reference, measured before the others. */
static const pikv_kv_type sweep_kv_types[] = {PIKV_KV_F32, PIKV_KV_F16, PIKV_KV_Q8_0, PIKV_KV_Q4_0};

enum {
    N_SWEEP_CONTEXTS = sizeof sweep_contexts / sizeof *sweep_contexts,
    N_SWEEP_KV = sizeof sweep_kv_types / sizeof *sweep_kv_types,
    /* the main group, a context group per length, one per KV setting (the main one among them) */
    MAX_GROUPS = 1 + N_SWEEP_CONTEXTS + 1 + N_SWEEP_KV + 1
};

/* ---- methods ------------------------------------------------------------ */

/* The press name at the head of a spec: "snapkv" of "snapkv:0.5", "composed"
 * of "composed[...]". */
static void press_of_spec(const char *spec, char *out, size_t cap)
{
    size_t n = strcspn(spec, ":([{,; ");
    snprintf(out, cap, "%.*s", (int)n, spec);
}

/* The names PiKVpress's comparison gives its three presses; other presses are named by their
 * spec, or by their press name when the spec has placeholders (its values
 * change from one sweep point to the next). */
static void default_name(const char *spec, char *out, size_t cap)
{
    char press[32];
    press_of_spec(spec, press, sizeof press);
    const int templated = strchr(spec, '{') != NULL;
    const char *name = strcmp(press, "none") == 0       ? "No Compression"
                       : strcmp(press, "duo") == 0      ? "Duo Attention"
                       : strcmp(press, "eplb_duo") == 0 ? "EPLB + Duo Attention"
                       : templated                      ? press
                                                        : spec;
    snprintf(out, cap, "%.*s", (int)cap - 1, name); /* a long spec is cut in the name only */
}

/* PiKVpress's comparison's three methods, their specs built from the tunables. */
int pk_methods_default(pk_method *out)
{
    static const char *const specs[] = {"none", "duo:ratio={r}",
                                        "eplb_duo:ratio={r},experts={e},top_k={k},eplb_share={s}"};
    for (int i = 0; i < 3; i++) {
        snprintf(out[i].spec, sizeof out[i].spec, "%s", specs[i]);
        default_name(specs[i], out[i].name, sizeof out[i].name);
    }
    return 3;
}

/* Copy s[0..n) without its leading and trailing blanks into out. */
static int copy_trimmed(const char *s, size_t n, char *out, size_t cap)
{
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    if (n >= cap) return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

/* Split a --methods list on ';' and name each method. */
int pk_methods_parse(const char *text, pk_method *out, int cap, int *n)
{
    *n = 0;
    for (const char *item = text;; item++) {
        const size_t len = strcspn(item, ";");
        if (*n == cap) return pk_fail("at most %d methods", cap);
        pk_method *m = &out[*n];
        const char *eq = memchr(item, '=', len);
        const int named = eq && strcspn(item, ":([{,") > (size_t)(eq - item);
        const char *spec = named ? eq + 1 : item;
        if (copy_trimmed(spec, len - (size_t)(spec - item), m->spec, sizeof m->spec))
            return pk_fail("method %d: the spec is longer than %zu bytes", *n + 1, sizeof m->spec - 1);
        if (!m->spec[0]) return pk_fail("method %d: empty press spec (methods are separated by ';')", *n + 1);
        if (named && copy_trimmed(item, (size_t)(eq - item), m->name, sizeof m->name))
            return pk_fail("method %d: the name is longer than %zu bytes", *n + 1, sizeof m->name - 1);
        if (!named || !m->name[0]) default_name(m->spec, m->name, sizeof m->name);
        ++*n;
        if (!item[len]) return 0;
        item += len;
    }
}

/* Make No Compression the first method: every quality figure is measured against it. */
int pk_methods_with_baseline(pk_method *methods, int *n, int cap)
{
    int base = -1;
    for (int i = 0; i < *n && base < 0; i++) {
        char press[32];
        press_of_spec(methods[i].spec, press, sizeof press);
        if (strcmp(press, "none") == 0) base = i;
    }
    if (base < 0) {
        if (*n == cap) return pk_fail("at most %d methods with the baseline", cap);
        base = (*n)++;
        snprintf(methods[base].spec, sizeof methods[base].spec, "none");
        default_name("none", methods[base].name, sizeof methods[base].name);
    }
    pk_method baseline = methods[base];
    memmove(methods + 1, methods, (size_t)base * sizeof *methods);
    methods[0] = baseline;
    return 0;
}

/* Replace {r}, {e}, {k} and {s} in a template by the parameters' values. */
int pk_method_expand(const char *spec_template, const pk_method_params *p, char *out, size_t cap)
{
    size_t used = 0;
    for (const char *s = spec_template; *s;) {
        char piece[64];
        if (s[0] == '{' && s[1] && s[2] == '}') {
            switch (s[1]) {
            case 'r': snprintf(piece, sizeof piece, "%g", p->ratio); break;
            case 'e': snprintf(piece, sizeof piece, "%d", p->experts); break;
            case 'k': snprintf(piece, sizeof piece, "%d", p->top_k); break;
            case 's': snprintf(piece, sizeof piece, "%g", p->eplb_share); break;
            default: return pk_fail("'%s': unknown placeholder {%c} (known: {r} {e} {k} {s})", spec_template, s[1]);
            }
            s += 3;
        } else {
            piece[0] = *s++;
            piece[1] = '\0';
        }
        const size_t n = strlen(piece);
        if (used + n >= cap) return pk_fail("'%s': the expanded spec is too long", spec_template);
        memcpy(out + used, piece, n + 1);
        used += n;
    }
    if (used == 0 && cap) out[0] = '\0';
    return 0;
}

/* Whether a template depends on a parameter (so that a sweep over it moves it). */
int pk_method_uses(const char *spec_template, char key)
{
    const char placeholder[4] = {'{', key, '}', '\0'};
    return strstr(spec_template, placeholder) != NULL;
}

/* ---- scenarios, improvements, recommendation ---------------------------- */

static const pk_scenario scenarios[] = {
    {"long-doc-qa", 0.6, 6, 4000},
    {"chat", 0.4, 4, 1000},
    {"content", 0.5, 4, 2000},
};

/* Look a scenario preset up by name. */
const pk_scenario *pk_scenario_find(const char *name, const char **names)
{
    if (names) *names = "long-doc-qa|chat|content";
    for (size_t i = 0; i < sizeof scenarios / sizeof *scenarios; i++)
        if (strcmp(scenarios[i].name, name) == 0) return &scenarios[i];
    return NULL;
}

/* The longest context that leaves `room` positions for the question and answer. */
int pk_context_cap(int wanted, int n_positions, int room)
{
    const int most = n_positions - room;
    return wanted < most ? wanted : most;
}

/* The relative improvements PiKVpress's comparison reports: memory saved and speed gained, in percent. */
pk_improvement pk_improvement_of(double ref_bytes, double ref_tok_s, double bytes, double tok_s)
{
    return (pk_improvement){
        .memory_reduction_pct = ref_bytes != 0 ? (1 - bytes / ref_bytes) * 100 : NAN,
        .speed_improvement_pct = ref_tok_s != 0 ? (tok_s / ref_tok_s - 1) * 100 : NAN,
    };
}

/* The recommendation rule: the most memory saved among methods that keep enough quality. */
int pk_recommend(const pk_candidate *c, int n, double min_retained)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!(c[i].kv_reduction > 0) || !(c[i].retained >= min_retained)) continue;
        if (best < 0 || c[i].kv_reduction > c[best].kv_reduction ||
            (c[i].kv_reduction == c[best].kv_reduction && c[i].retained > c[best].retained))
            best = i;
    }
    return best;
}

/* ---- the experiment ----------------------------------------------------- */

/* Perplexity slices for a number of retrieval tasks: more for a larger run. */
static int slices_for_tasks(int n_tasks) { return 2 + n_tasks / 25; }

/* How quality is measured at one context length; the same for every method there. */
pk_quality_config pk_compare_quality_config(const pk_haystack *h, int n_positions, int context_tokens, int n_tasks,
                                            int query_aware, uint64_t seed)
{
    int task_max = pk_context_cap(context_tokens, n_positions, PK_COMPARE_RETRIEVAL_ROOM);
    if (task_max < 64) task_max = 64;
    return (pk_quality_config){
        .haystack = h,
        .n_tasks = n_tasks,
        .task_min_tokens = task_max / 2 > 64 ? task_max / 2 : 64,
        .task_max_tokens = task_max,
        .query_aware = query_aware,
        .seed = seed,
        .n_slices = slices_for_tasks(n_tasks),
        .slice_context = pk_context_cap(context_tokens, n_positions, PK_COMPARE_SLICE_TOKENS),
        .slice_tokens = PK_COMPARE_SLICE_TOKENS,
    };
}

/* The default context: one pass key at half depth, a fixed seed. */
int pk_compare_needle_task(const pk_haystack *h, int context_tokens, uint64_t seed, pk_task *out)
{
    return pk_task_make(h, PK_TASK_PASSKEY, 1, context_tokens, 0.5, seed, out);
}

/* The inputs of one set of rows measured together, and the session they run
 * in: the main context, a needle task of one length for the context sweep, or
 * the main context in a session of another KV type for the KV-type sweep. */
typedef struct {
    const int32_t *context, *question;
    int n_context, n_question;
    const pk_task *task;  /* for answer correctness, or NULL */
    pk_task owned;        /* the sweep's task, freed with the group */
    pikv_session *session;
    pikv_session *owned_session; /* the KV-type sweep's session, freed with the group */
    int reference;        /* the group whose first row is the quality and KV reference (often itself) */
    int first_row, n_rows;
} compare_group;

/* Everything a run holds besides the report. */
typedef struct {
    const pk_compare_config *c;
    pk_compare_report *r;
    compare_group groups[MAX_GROUPS];
    pk_quality_reference refs[MAX_GROUPS]; /* [group]: its reference logits while a later group needs them */
    int n_groups;
    pikv_press **presses;  /* [row] */
    int row_cap;
} compare_run;

/* Report a status line (printf-style) through the config's progress callback. */
static void status(const pk_compare_config *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status(const pk_compare_config *c, const char *fmt, ...)
{
    if (!c->progress) return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->progress(line, c->progress_ctx);
}

/* The row of `method` run with spec `spec` in group g, or -1. */
static int find_row(const compare_run *run, const compare_group *g, int method, const char *spec)
{
    for (int i = g->first_row; i < g->first_row + g->n_rows; i++)
        if (run->r->rows[i].method == method && strcmp(run->r->rows[i].spec, spec) == 0) return i;
    return -1;
}

/* Add (or find) the row of a method with the given parameters to the last group. */
static int add_row(compare_run *run, int method, const pk_method_params *p)
{
    pk_compare_report *r = run->r;
    compare_group *g = &run->groups[run->n_groups - 1];
    char spec[PK_COMPARE_SPEC_MAX];
    if (pk_method_expand(r->methods[method].spec, p, spec, sizeof spec)) return -1;
    int row = find_row(run, g, method, spec);
    if (row >= 0) return row;
    if (r->n_rows == run->row_cap) return pk_fail("compare: more than %d measurements", run->row_cap);
    row = r->n_rows++;
    pk_compare_row *w = &r->rows[row];
    memset(w, 0, sizeof *w);
    w->method = method;
    snprintf(w->spec, sizeof w->spec, "%s", spec);
    press_of_spec(spec, w->press, sizeof w->press);
    w->context_tokens = g->n_context;
    w->baseline = run->groups[g->reference].first_row;
    if (pikv_session_kv_types(g->session, &w->kv_type_k, &w->kv_type_v)) return -1;
    w->answer_correct = -1;
    g->n_rows++;
    return row;
}

/* Open a group for the given inputs. */
static compare_group *open_group(compare_run *run, const int32_t *context, int n_context, const int32_t *question,
                                 int n_question, const pk_task *task)
{
    compare_group *g = &run->groups[run->n_groups];
    *g = (compare_group){.context = context, .n_context = n_context, .question = question,
                         .n_question = n_question, .task = task, .session = run->c->session,
                         .reference = run->n_groups, .first_row = run->r->n_rows};
    run->n_groups++;
    return g;
}

/* 1 when two token sequences are equal. */
static int same_tokens(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && memcmp(a, b, (size_t)na * sizeof *a) == 0;
}

/* The context sweep's groups: a needle task of each length that fits (the
 * longest leaves room for its question and the answer); a task equal to the
 * main inputs reuses the main group. Writes the group of each length. */
static int plan_context_groups(compare_run *run, int *sweep_group, int *n_lengths)
{
    const pk_compare_config *c = run->c;
    const int n_positions = pikv_model_config(pikv_session_model(c->session))->n_positions;
    pk_task probe;
    if (pk_compare_needle_task(c->haystack, 64, c->seed, &probe)) return -1;
    const int longest = pk_context_cap(n_positions, n_positions, probe.n_question + c->max_new_tokens);
    pk_task_free(&probe);
    int lengths[sizeof sweep_contexts / sizeof *sweep_contexts + 1], n = 0;
    for (size_t i = 0; i < sizeof sweep_contexts / sizeof *sweep_contexts; i++)
        if (sweep_contexts[i] < longest) lengths[n++] = sweep_contexts[i];
    lengths[n++] = longest;
    *n_lengths = 0;
    for (int i = 0; i < n; i++) {
        pk_task t;
        if (pk_compare_needle_task(c->haystack, lengths[i], c->seed, &t)) return -1;
        if (same_tokens(t.context, t.n_context, c->context, c->n_context) &&
            same_tokens(t.question, t.n_question, c->question, c->n_question)) {
            pk_task_free(&t);
            sweep_group[(*n_lengths)++] = 0;
            continue;
        }
        compare_group *g = open_group(run, t.context, t.n_context, t.question, t.n_question, NULL);
        g->owned = t;
        g->task = &g->owned;
        sweep_group[(*n_lengths)++] = run->n_groups - 1;
        for (int m = 0; m < c->n_methods; m++)
            if (add_row(run, m, &c->params) < 0) return -1;
    }
    return 0;
}

/* Insert x into the increasing list v[0..*n) unless it is there already. */
static void insert_value(double *v, size_t *n, double x)
{
    size_t at = 0;
    while (at < *n && v[at] < x) at++;
    if (at < *n && v[at] == x) return;
    memmove(v + at + 1, v + at, (*n - at) * sizeof *v);
    v[at] = x;
    ++*n;
}

/* The parameters of a sweep point: the main ones with the swept one set to x. */
static pk_method_params swept_params(const pk_method_params *at_main, pk_sweep sweep, double x)
{
    pk_method_params p = *at_main;
    if (sweep == PK_SWEEP_RATIO) p.ratio = x;
    if (sweep == PK_SWEEP_EXPERTS) {
        p.experts = (int)x;
        if (p.top_k > p.experts) p.top_k = p.experts; /* top-k cannot pass the expert count */
    }
    return p;
}

/* The main group's rows: every method at the main setting, and in the detailed
 * run at each swept ratio and number of experts. */
static int plan_main_group(compare_run *run)
{
    const pk_compare_config *c = run->c;
    open_group(run, c->context, c->n_context, c->question, c->n_question, c->task);
    for (int m = 0; m < c->n_methods; m++)
        if ((run->r->main_rows[m] = add_row(run, m, &c->params)) < 0) return -1;
    if (!c->detailed) return 0;
    for (int m = 0; m < c->n_methods; m++) {
        for (size_t i = 0; i < sizeof sweep_ratios / sizeof *sweep_ratios; i++) {
            const pk_method_params p = swept_params(&c->params, PK_SWEEP_RATIO, sweep_ratios[i]);
            if (add_row(run, m, &p) < 0) return -1;
        }
        for (size_t i = 0; i < sizeof sweep_experts / sizeof *sweep_experts; i++) {
            const pk_method_params p = swept_params(&c->params, PK_SWEEP_EXPERTS, sweep_experts[i]);
            if (add_row(run, m, &p) < 0) return -1;
        }
    }
    return 0;
}

/* The bits a stored value takes in a KV setting, keys and values averaged. */
static double kv_bits(pikv_kv_type type_k, pikv_kv_type type_v, int head_dim)
{
    return (double)(pk_kv_row_bytes(type_k, head_dim) + pk_kv_row_bytes(type_v, head_dim)) * 4.0 / head_dim;
}

/* A session like the main one (same model and threads) whose cache stores
 * keys and values in the given types. */
static pikv_session *kv_session(const pk_compare_config *c, pikv_kv_type type_k, pikv_kv_type type_v)
{
    pikv_session_params p = pikv_session_default_params();
    p.n_threads = pikv_session_threads(c->session);
    p.kv_type_k = type_k;
    p.kv_type_v = type_v;
    return pikv_session_new_with_params(pikv_session_model(c->session), &p);
}

/* The KV-type sweep's groups: every method at the main parameters on the main
 * inputs, in a session of each type of sweep_kv_types and of the main setting
 * (a type the model's head size cannot store is left out). The f32 group is
 * the reference of the others -- the main group itself when the main setting
 * is f32 -- so that every type is judged against No Compression in f32.
 * Writes each setting's group and x (kv_bits), by increasing x. */
static int plan_kv_groups(compare_run *run, int *kv_groups, double *kv_x, int *n_settings)
{
    const pk_compare_config *c = run->c;
    pk_compare_report *r = run->r;
    *n_settings = 0;
    /* A device keeps the KV cache in its weights' type: the sweep is the CPU's. */
    if (strcmp(r->device, "cpu") != 0) return 0;
    const int head_dim = pikv_model_config(pikv_session_model(c->session))->head_dim;
    pikv_kv_type main_k, main_v;
    if (pikv_session_kv_types(c->session, &main_k, &main_v)) return -1;
    const int main_is_f32 = main_k == PIKV_KV_F32 && main_v == PIKV_KV_F32;
    pikv_kv_type settings[N_SWEEP_KV + 1][2];
    int n = 0, reference = -1;
    for (int i = 0; i < N_SWEEP_KV; i++) {
        if (pk_kv_type_check(sweep_kv_types[i], head_dim, "keys and values")) continue;
        settings[n][0] = settings[n][1] = sweep_kv_types[i];
        n++;
    }
    int main_listed = 0;
    for (int i = 0; i < n; i++) main_listed |= settings[i][0] == main_k && settings[i][1] == main_v;
    if (!main_listed) {
        settings[n][0] = main_k;
        settings[n][1] = main_v;
        n++;
    }
    for (int i = 0; i < n; i++) { /* f32 comes first, so that the reference group opens first */
        int group = 0;
        if (!(i == 0 && main_is_f32)) {
            pikv_session *s = kv_session(c, settings[i][0], settings[i][1]);
            if (!s) return -1;
            compare_group *g = open_group(run, c->context, c->n_context, c->question, c->n_question, c->task);
            g->session = g->owned_session = s;
            if (reference >= 0) g->reference = reference;
            group = run->n_groups - 1;
            for (int m = 0; m < c->n_methods; m++)
                if (add_row(run, m, &c->params) < 0) return -1;
        }
        if (i == 0) {
            reference = group;
            r->f32_row = run->groups[group].first_row;
        }
        if (settings[i][0] == PIKV_KV_F16 && settings[i][1] == PIKV_KV_F16) r->f16_row = run->groups[group].first_row;
        const double x = kv_bits(settings[i][0], settings[i][1], head_dim);
        int at = *n_settings;
        while (at > 0 && kv_x[at - 1] > x) {
            kv_x[at] = kv_x[at - 1];
            kv_groups[at] = kv_groups[at - 1];
            at--;
        }
        kv_x[at] = x;
        kv_groups[at] = group;
        ++*n_settings;
    }
    return 0;
}

/* The detailed run's points, by sweep, then method, then increasing x: each
 * method's row at each value of a sweep, the main setting included (a method
 * that does not use the swept parameter gives a flat line). A sweep that no
 * method depends on is left out. The context and KV-type sweeps take their
 * rows from groups: the main group's, or the method's row in the group. */
static int plan_points(compare_run *run, const int *context_groups, int n_lengths, const int *kv_groups,
                       const double *kv_x, int n_settings)
{
    const pk_compare_config *c = run->c;
    pk_compare_report *r = run->r;
    enum { MAX_VALUES = 8 };
    double values[PK_SWEEP_COUNT][MAX_VALUES];
    size_t n_values[PK_SWEEP_COUNT] = {0};
    for (int m = 0; m < c->n_methods; m++) {
        if (pk_method_uses(r->methods[m].spec, 'r') && n_values[PK_SWEEP_RATIO] == 0) {
            for (size_t i = 0; i < sizeof sweep_ratios / sizeof *sweep_ratios; i++)
                insert_value(values[PK_SWEEP_RATIO], &n_values[PK_SWEEP_RATIO], sweep_ratios[i]);
            insert_value(values[PK_SWEEP_RATIO], &n_values[PK_SWEEP_RATIO], c->params.ratio);
        }
        if (pk_method_uses(r->methods[m].spec, 'e') && n_values[PK_SWEEP_EXPERTS] == 0) {
            for (size_t i = 0; i < sizeof sweep_experts / sizeof *sweep_experts; i++)
                insert_value(values[PK_SWEEP_EXPERTS], &n_values[PK_SWEEP_EXPERTS], sweep_experts[i]);
            insert_value(values[PK_SWEEP_EXPERTS], &n_values[PK_SWEEP_EXPERTS], c->params.experts);
        }
    }
    for (int i = 0; i < n_lengths; i++) values[PK_SWEEP_CONTEXT][i] = run->groups[context_groups[i]].n_context;
    n_values[PK_SWEEP_CONTEXT] = (size_t)n_lengths;
    for (int i = 0; i < n_settings; i++) values[PK_SWEEP_KV_TYPE][i] = kv_x[i];
    n_values[PK_SWEEP_KV_TYPE] = (size_t)n_settings;
    if (!(r->points = pk_calloc((size_t)c->n_methods * PK_SWEEP_COUNT * MAX_VALUES, sizeof *r->points,
                                "sweep points")))
        return -1;
    for (int s = 0; s < PK_SWEEP_COUNT; s++)
        for (int m = 0; m < c->n_methods; m++)
            for (size_t i = 0; i < n_values[s]; i++) {
                int row;
                if (s == PK_SWEEP_CONTEXT || s == PK_SWEEP_KV_TYPE) {
                    const compare_group *g = &run->groups[s == PK_SWEEP_CONTEXT ? context_groups[i] : kv_groups[i]];
                    row = g == &run->groups[0] ? r->main_rows[m] : g->first_row + m;
                } else {
                    const pk_method_params p = swept_params(&c->params, (pk_sweep)s, values[s][i]);
                    char spec[PK_COMPARE_SPEC_MAX];
                    if (pk_method_expand(r->methods[m].spec, &p, spec, sizeof spec)) return -1;
                    row = find_row(run, &run->groups[0], m, spec);
                }
                r->points[r->n_points++] = (pk_sweep_point){(pk_sweep)s, values[s][i], m, row};
            }
    return 0;
}

/* Progress of the quality measurement of one row. */
typedef struct {
    const pk_compare_config *c;
    const char *label;
} quality_progress;

/* Pass a quality stage on as a status line naming the row. */
static void show_quality_progress(const char *stage, int done, int total, void *ctx)
{
    const quality_progress *q = ctx;
    status(q->c, "%s: %s %d/%d", q->label, stage, done, total);
}

/* "NAME" or "NAME (SPEC)" and the context length, for status lines; and the
 * KV type of a row whose type is not the main setting's (the first row's). */
static void row_label(const pk_compare_report *r, const pk_compare_row *w, char *out, size_t cap)
{
    const char *name = r->methods[w->method].name;
    char type[32], kv[48] = "";
    if (w->kv_type_k != r->rows[0].kv_type_k || w->kv_type_v != r->rows[0].kv_type_v) {
        pk_compare_kv_type_text(w, type, sizeof type);
        snprintf(kv, sizeof kv, ", %s KV", type);
    }
    if (strcmp(name, w->spec) == 0) snprintf(out, cap, "%d tokens%s, %s", w->context_tokens, kv, name);
    else snprintf(out, cap, "%d tokens%s, %s (%s)", w->context_tokens, kv, name, w->spec);
}

/* Keep a row's greedy answer, cut at the first end-of-text token. */
static int keep_answer(const compare_run *run, const compare_group *g, pk_compare_row *w, const int32_t *ids, int n)
{
    const int eos = pikv_model_config(pikv_session_model(run->c->session))->eos_token_id;
    int len = 0;
    while (len < n && ids[len] != eos) len++;
    if (!(w->answer_ids = pk_malloc_array((size_t)(len ? len : 1), sizeof *ids, "answer"))) return -1;
    memcpy(w->answer_ids, ids, (size_t)len * sizeof *ids);
    w->n_answer_ids = len;
    if (!(w->answer = pikv_detokenize(run->c->haystack->tok, ids, (size_t)len, NULL))) return -1;
    w->answer_correct = g->task ? pk_task_correct(run->c->haystack->tok, g->task, ids, len) : -1;
    return 0;
}

enum { PREFILL, COMPRESSION, DECODE, TOTAL, PREFILL_SPEED, DECODE_SPEED, N_MEASURES };

/* What the timed runs of one group share. */
typedef struct {
    compare_run *run;
    const compare_group *g;
    const pikv_qa_request *request;
} group_timing;

/* One timed run of a row: answer the question greedily and record its times,
 * speeds and KV bytes; the first repetition also keeps its answer. */
static int time_row(int i, int rep, double *measure, void *ctx)
{
    const group_timing *t = ctx;
    const pk_compare_config *c = t->run->c;
    pk_compare_row *w = &t->run->r->rows[t->g->first_row + i];
    char label[PK_COMPARE_SPEC_MAX + 128];
    row_label(t->run->r, w, label, sizeof label);
    status(c, "%s: timing, repetition %d/%d", label, rep + 1, c->reps);
    pikv_qa_result res;
    if (pikv_answer(t->g->session, t->run->presses[t->g->first_row + i], t->request, &res))
        return pk_fail_prefix("%s", label);
    measure[PREFILL] = res.prefill_s;
    measure[COMPRESSION] = res.compression_s;
    measure[DECODE] = res.decode_s;
    measure[TOTAL] = res.prefill_s + res.compression_s + res.decode_s;
    measure[PREFILL_SPEED] = res.prefill_s > 0 ? (t->g->n_context + t->g->n_question) / res.prefill_s : 0;
    measure[DECODE_SPEED] = res.decode_s > 0 ? res.decode_tokens / res.decode_s : 0;
    w->kv_bytes = res.kv_bytes_after;
    w->kv_bytes_full = res.kv_bytes_before;
    snprintf(w->press_note, sizeof w->press_note, "%s", pk_session_press_note(t->g->session));
    const int rc = rep == 0 ? keep_answer(t->run, t->g, w, res.answers[0], res.n_answer[0]) : 0;
    pikv_qa_result_free(&res);
    return rc;
}

/* Time every row of a group in rotated order (bench/timing.h), answering the
 * question greedily (always the full max_new_tokens, so that every method
 * decodes the same number of tokens). */
static int time_group(compare_run *run, const compare_group *g)
{
    const pk_compare_config *c = run->c;
    const int32_t *q = g->question;
    const pikv_qa_request rq = {.context = g->context, .n_context = g->n_context, .questions = &q,
                                .n_question = &g->n_question, .n_questions = 1,
                                .max_new_tokens = c->max_new_tokens, .stop_id = -1, .query_aware = c->query_aware};
    group_timing t = {run, g, &rq};
    const pk_rotated_timing timing = {.n_methods = g->n_rows, .reps = c->reps, .n_measures = N_MEASURES,
                                      .run = time_row, .ctx = &t};
    pk_summary *sums = pk_malloc_array((size_t)g->n_rows * N_MEASURES, sizeof *sums, "timings");
    if (!sums || pk_time_rotated(&timing, sums)) {
        pk_free(sums);
        return -1;
    }
    for (int i = 0; i < g->n_rows; i++) {
        pk_compare_row *w = &run->r->rows[g->first_row + i];
        const pk_summary *s = sums + (size_t)i * N_MEASURES;
        w->prefill_s = s[PREFILL];
        w->compression_s = s[COMPRESSION];
        w->decode_s = s[DECODE];
        w->total_s = s[TOTAL];
        w->prefill_tok_s = s[PREFILL_SPEED];
        w->decode_tok_s = s[DECODE_SPEED];
    }
    pk_free(sums);
    return 0;
}

/* Whether a group after g takes g as its reference. */
static int referenced_later(const compare_run *run, int g)
{
    for (int h = g + 1; h < run->n_groups; h++)
        if (run->groups[h].reference == g) return 1;
    return 0;
}

/* Quality of every row of group gi against its baseline: the first row of its
 * reference group, which is measured first (the group's own first row, or an
 * earlier group's, whose reference logits were kept for it). The logits go
 * once no later group needs them. */
static int judge_group(compare_run *run, int gi)
{
    const pk_compare_config *c = run->c;
    pk_compare_report *r = run->r;
    const compare_group *g = &run->groups[gi];
    const int n_positions = pikv_model_config(pikv_session_model(c->session))->n_positions;
    const pk_quality_config qc =
        pk_compare_quality_config(c->haystack, n_positions, g->n_context, c->n_tasks, c->query_aware, c->seed);
    pk_quality_reference *ref = &run->refs[g->reference];
    for (int i = g->first_row; i < g->first_row + g->n_rows; i++) {
        pk_compare_row *w = &r->rows[i];
        const pk_compare_row *base = &r->rows[w->baseline];
        char label[PK_COMPARE_SPEC_MAX + 128];
        row_label(r, w, label, sizeof label);
        quality_progress qp = {c, label};
        if (pk_quality_measure(g->session, run->presses[i], &qc, ref, show_quality_progress, &qp, &w->quality))
            return pk_fail_prefix("%s", label);
        w->quality.answer_agree =
            pk_answer_agreement(base->answer_ids, base->n_answer_ids, w->answer_ids, w->n_answer_ids);
        w->retained = pk_quality_retained(&w->quality, &base->quality);
    }
    if (!referenced_later(run, gi)) pk_quality_reference_free(&run->refs[gi]);
    return 0;
}

/* Build every row's press before measuring anything, so that a bad spec fails
 * at once; the error names the method. */
static int make_presses(compare_run *run)
{
    pk_compare_report *r = run->r;
    if (!(run->presses = pk_calloc((size_t)r->n_rows, sizeof *run->presses, "presses"))) return -1;
    for (int i = 0; i < r->n_rows; i++) {
        const pk_compare_row *w = &r->rows[i];
        const pikv_model *m = pikv_session_model(run->c->session);
        const char *name = r->methods[w->method].name;
        if (!(run->presses[i] = pikv_press_new(w->spec, m, run->c->model_dir)))
            return strcmp(name, w->spec) == 0 ? pk_fail_prefix("method '%s'", name)
                                              : pk_fail_prefix("method '%s' (%s)", name, w->spec);
    }
    return 0;
}

/* On a device, each method's capacity at the KV budget: sequences of the
 * main context compressed by its press at the main settings, each then
 * decoding the answer's tokens. */
static int measure_capacity(compare_run *run)
{
    const pk_compare_config *c = run->c;
    pk_compare_report *r = run->r;
    for (int m = 0; m < r->n_methods; m++) {
        const int row = r->main_rows[m];
        char label[PK_COMPARE_SPEC_MAX + 128];
        row_label(r, &r->rows[row], label, sizeof label);
        status(c, "%s: capacity at the KV budget", label);
        if (pk_session_capacity(c->session, c->context, c->n_context, run->presses[row], c->max_new_tokens,
                                c->kv_budget, &r->capacity[m]))
            return pk_fail_prefix("%s", label);
    }
    r->n_capacity = r->n_methods;
    return 0;
}

/* Page in the weights, start the threads and size a session's buffers
 * before the first timing in it. */
static int warm_up(const pk_compare_config *c, pikv_session *s)
{
    const int n = c->n_context < 16 ? c->n_context : 16;
    const int32_t *q = c->question;
    const pikv_qa_request rq = {.context = c->context, .n_context = n, .questions = &q, .n_question = &c->n_question,
                                .n_questions = 1, .max_new_tokens = 2, .stop_id = -1};
    pikv_qa_result res;
    if (pikv_answer(s, NULL, &rq, &res)) return -1;
    pikv_qa_result_free(&res);
    return 0;
}

/* Copy the header of the report from the config. */
static int start_report(const pk_compare_config *c, pk_compare_report *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->model, sizeof r->model, "%s", c->model_name ? c->model_name : "");
    snprintf(r->machine, sizeof r->machine, "%s", c->machine ? c->machine : "");
    snprintf(r->context_source, sizeof r->context_source, "%s", c->context_source ? c->context_source : "");
    if (!(r->question = pk_strdup(c->question_text ? c->question_text : "", "question"))) return -1;
    r->threads = pikv_session_threads(c->session);
    snprintf(r->device, sizeof r->device, "%s", pikv_session_device(c->session));
    r->context_tokens = c->n_context;
    r->question_tokens = c->n_question;
    r->max_new_tokens = c->max_new_tokens;
    r->reps = c->reps;
    r->query_aware = c->query_aware;
    r->detailed = c->detailed;
    r->f32_row = r->f16_row = -1;
    const int n_positions = pikv_model_config(pikv_session_model(c->session))->n_positions;
    const pk_quality_config qc =
        pk_compare_quality_config(c->haystack, n_positions, c->n_context, c->n_tasks, c->query_aware, c->seed);
    r->n_tasks = qc.n_tasks;
    r->task_min_tokens = qc.task_min_tokens;
    r->task_max_tokens = qc.task_max_tokens;
    r->n_slices = qc.n_slices;
    r->slice_context = qc.slice_context;
    r->slice_tokens = qc.slice_tokens;
    r->params = c->params;
    r->n_methods = c->n_methods;
    memcpy(r->methods, c->methods, (size_t)c->n_methods * sizeof *c->methods);
    return 0;
}

/* Plan every measurement, build every press (so a bad spec fails before any
 * timing), then time and judge each group of rows on its own inputs. */
int pk_compare_run(const pk_compare_config *c, pk_compare_report *out)
{
    if (c->n_methods < 1 || c->n_methods > PK_COMPARE_MAX_METHODS)
        return pk_fail("compare: %d methods (1 to %d)", c->n_methods, PK_COMPARE_MAX_METHODS);
    char press[32];
    press_of_spec(c->methods[0].spec, press, sizeof press);
    if (strcmp(press, "none") != 0) return pk_fail("compare: the first method must be the baseline, none");
    if (c->reps < 1 || c->n_tasks < 1 || c->max_new_tokens < 2 || c->n_context < 1 || c->n_question < 1)
        return pk_fail("compare: need reps >= 1, tasks >= 1, max_new_tokens >= 2, a context and a question");
    if (start_report(c, out)) return -1;
    compare_run run = {.c = c, .r = out, .row_cap = PK_COMPARE_MAX_METHODS * 20};
    int rc = -1, context_groups[MAX_GROUPS], n_lengths = 0, kv_groups[MAX_GROUPS], n_settings = 0;
    double kv_x[MAX_GROUPS];
    if (!(out->rows = pk_calloc((size_t)run.row_cap, sizeof *out->rows, "measurements"))) goto done;
    if (plan_main_group(&run)) goto done;
    if (c->detailed && (plan_context_groups(&run, context_groups, &n_lengths) ||
                        plan_kv_groups(&run, kv_groups, kv_x, &n_settings) ||
                        plan_points(&run, context_groups, n_lengths, kv_groups, kv_x, n_settings)))
        goto done;
    if (make_presses(&run) || warm_up(c, c->session)) goto done;
    for (int g = 0; g < run.n_groups; g++)
        if ((run.groups[g].owned_session && warm_up(c, run.groups[g].owned_session)) ||
            time_group(&run, &run.groups[g]) || judge_group(&run, g))
            goto done;
    if (c->kv_budget && measure_capacity(&run)) goto done;
    rc = 0;
done:
    if (c->progress) c->progress(NULL, c->progress_ctx);
    for (int i = 0; run.presses && i < out->n_rows; i++) pikv_press_free(run.presses[i]);
    pk_free(run.presses);
    for (int g = 0; g < run.n_groups; g++) {
        pk_task_free(&run.groups[g].owned);
        pikv_session_free(run.groups[g].owned_session);
        pk_quality_reference_free(&run.refs[g]);
    }
    if (rc) pk_compare_report_free(out);
    return rc;
}

/* Release the rows, their answers, the sweep points and the question. */
void pk_compare_report_free(pk_compare_report *r)
{
    for (int i = 0; r->rows && i < r->n_rows; i++) {
        pk_free(r->rows[i].answer_ids);
        pk_free(r->rows[i].answer);
    }
    pk_free(r->rows);
    pk_free(r->points);
    pk_free(r->question);
    memset(r, 0, sizeof *r);
}

/* ---- what the report shows ---------------------------------------------- */

/* Improvements of the main methods over the baseline, and of EPLB + Duo over Duo. */
int pk_compare_gains(const pk_compare_report *r, pk_compare_gain *out, int cap)
{
    int n = 0, duo = -1, eplb_duo = -1;
    const pk_compare_row *base = &r->rows[r->main_rows[0]];
    for (int m = 1; m < r->n_methods && n < cap; m++) {
        const pk_compare_row *w = &r->rows[r->main_rows[m]];
        if (strcmp(w->press, "duo") == 0 && duo < 0) duo = r->main_rows[m];
        if (strcmp(w->press, "eplb_duo") == 0 && eplb_duo < 0) eplb_duo = r->main_rows[m];
        out[n++] = (pk_compare_gain){r->main_rows[m], r->main_rows[0],
                                     pk_improvement_of((double)base->kv_bytes, base->decode_tok_s.median,
                                                       (double)w->kv_bytes, w->decode_tok_s.median)};
    }
    if (duo >= 0 && eplb_duo >= 0 && n < cap) {
        const pk_compare_row *a = &r->rows[duo], *b = &r->rows[eplb_duo];
        out[n++] = (pk_compare_gain){eplb_duo, duo,
                                     pk_improvement_of((double)a->kv_bytes, a->decode_tok_s.median,
                                                       (double)b->kv_bytes, b->decode_tok_s.median)};
    }
    return n;
}

/* The fraction of KV bytes a row saves against its own baseline. */
double pk_compare_kv_reduction(const pk_compare_report *r, int row)
{
    const pk_compare_row *w = &r->rows[row], *base = &r->rows[w->baseline];
    return base->kv_bytes ? 1 - (double)w->kv_bytes / (double)base->kv_bytes : 0;
}

/* Apply the recommendation rule to every row, press and KV type together: a
 * KV-type sweep row's reduction is against No Compression in f32, so its
 * storage type counts as much as its press. Quality retained is the lower of
 * retrieval accuracy retained and perplexity retained: a setting that still
 * finds needles but no longer models text (DuoAttention at 0.9 on the bundled
 * model: perplexity 8.3 -> 27.7) is not one to recommend. fmin returns the
 * other operand of a NaN, so where the baseline answers no needle task
 * (retrieval retained undefined) perplexity alone decides. */
int pk_compare_recommend(const pk_compare_report *r)
{
    pk_candidate *c = pk_malloc_array((size_t)(r->n_rows ? r->n_rows : 1), sizeof *c, "candidates");
    if (!c) return -1;
    for (int i = 0; i < r->n_rows; i++) c[i] = (pk_candidate){pk_compare_kv_reduction(r, i), pk_compare_retained(r, i)};
    const int best = pk_recommend(c, r->n_rows, PK_RECOMMEND_MIN_RETAINED);
    pk_free(c);
    return best;
}

/* The lower of retrieval and perplexity retained; see compare.h for why both. */
double pk_compare_retained(const pk_compare_report *r, int row)
{
    const pk_quality *q = &r->rows[row].retained;
    return fmin(q->retrieval_acc, q->ppl);
}

/* The nearest setting that would have saved more than the recommendation:
 * what the report names as the reason it stopped there. */
int pk_compare_next_rejected(const pk_compare_report *r, int best)
{
    const double floor = best >= 0 ? pk_compare_kv_reduction(r, best) : 0;
    int next = -1;
    for (int i = 0; i < r->n_rows; i++) {
        const double x = pk_compare_kv_reduction(r, i);
        if (x > floor && (next < 0 || x < pk_compare_kv_reduction(r, next))) next = i;
    }
    return next;
}

/* KV bytes against a reference row's; the KV-type sweep's "vs f32 / f16 cache". */
double pk_compare_kv_fraction(const pk_compare_report *r, int row, int of_row)
{
    if (row < 0 || of_row < 0 || r->rows[of_row].kv_bytes == 0) return NAN;
    return (double)r->rows[row].kv_bytes / (double)r->rows[of_row].kv_bytes;
}

/* One name when keys and values share a type, K/V otherwise. */
void pk_compare_kv_type_text(const pk_compare_row *w, char *out, size_t cap)
{
    if (w->kv_type_k == w->kv_type_v) snprintf(out, cap, "%s", pikv_kv_type_name(w->kv_type_k));
    else snprintf(out, cap, "%s/%s", pikv_kv_type_name(w->kv_type_k), pikv_kv_type_name(w->kv_type_v));
}
