/* Press spec parser.
 *
 * Grammar (whitespace -- space, tab, newline, CR, FF, VT -- may surround any
 * token and is ignored):
 *
 *   spec   := name [ '(' spec ')' ] [ ':' params ]
 *           | 'composed' '[' spec { ',' spec } ']' [ ':' params ]
 *   name   := [a-z_][a-z0-9_]*                      at most 31 bytes
 *   params := param { ',' param }
 *   param  := key '=' value | value                 a bare value only first; it means ratio=value
 *   key    := [a-z_][a-z0-9_]*                      at most 31 bytes
 *   value  := one or more bytes other than , [ ] ( ) = whitespace and control bytes,
 *             at most 255 ("0.5", "-1", "1e-3", "models/x/duo", "0.1/0.2" are values)
 *
 * The name "composed" always takes the [...] form; no other name does.
 * Inside composed[...] the commas separate both items and parameters: an item
 * that is a key followed by '=' continues the parameters of the press before
 * it, anything else starts a new press. So composed[snapkv:0.5,window=64,duo:0.5]
 * holds snapkv{ratio=0.5, window=64} and duo{ratio=0.5}. Within (...) commas
 * always separate parameters.
 *
 * Values may not contain '=' so that "ratio==0.5" or "Ratio=0.5" is an error
 * at the right place rather than a strange value, and so that a bare value is
 * never mistaken for a key when the canonical text is parsed again.
 *
 * Limits -- PK_SPEC_MAX_LEN bytes of text, PK_SPEC_MAX_DEPTH levels of nesting,
 * PK_SPEC_MAX_PARAMS and PK_SPEC_MAX_CHILDREN per press -- keep the recursion and
 * the memory bounded whatever the input. */
#include "press/spec.h"
#include "util/error.h"
#include "util/mem.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A spec longer than this is quoted as a window of this many bytes around the
 * position of the error. */
enum { QUOTE_WINDOW = 120 };

typedef struct {
    const char *text;
    size_t len;
    size_t pos;          /* next byte to read; text[len] is the terminating NUL */
    char found[32];      /* scratch for describe_found */
} spec_parser;

/* The whitespace the grammar ignores, without the locale dependence of isspace. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* First byte of a name or key. */
static int is_ident_start(char c) { return (c >= 'a' && c <= 'z') || c == '_'; }

/* Later bytes of a name or key. */
static int is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

/* Bytes a value may hold: anything but punctuation of the grammar, '=',
 * whitespace and control bytes (bytes >= 0x80 are allowed, for UTF-8 paths). */
static int is_value_char(char c)
{
    unsigned char u = (unsigned char)c;
    if (u < 0x20 || u == 0x7f) return 0;
    return !is_space(c) && strchr(",[]()=", c) == NULL;
}

/* The byte at the read position ('\0' at the end of the text). */
static char peek(const spec_parser *p) { return p->text[p->pos]; }

/* The position of the first non-whitespace byte at or after `at`. */
static size_t skip_space_from(const spec_parser *p, size_t at)
{
    while (at < p->len && is_space(p->text[at])) at++;
    return at;
}

/* Move the read position past whitespace. */
static void skip_space(spec_parser *p) { p->pos = skip_space_from(p, p->pos); }

/* True when a key and '=' start at or after `at` (after optional whitespace):
 * an identifier, optional whitespace, '='. This is how an item of composed[...]
 * that continues the parameters of the previous press is recognised. */
static int key_follows(const spec_parser *p, size_t at)
{
    at = skip_space_from(p, at);
    if (!is_ident_start(p->text[at])) return 0;
    while (is_ident_char(p->text[at])) at++;
    at = skip_space_from(p, at);
    return p->text[at] == '=';
}

/* Describe the byte at `at` for an error message: 'x', byte 0x01, or end of
 * text. The string lives in the parser until the next call. */
static const char *describe_found(spec_parser *p, size_t at)
{
    unsigned char c = (unsigned char)p->text[at];
    if (at >= p->len)
        snprintf(p->found, sizeof p->found, "end of text");
    else if (c >= 0x20 && c < 0x7f)
        snprintf(p->found, sizeof p->found, "'%c'", c);
    else
        snprintf(p->found, sizeof p->found, "byte 0x%02x", c);
    return p->found;
}

/* Copy the spec, or a window of it around `at` when it is long, into buf for
 * quoting, escaping control bytes so that the message stays on one line. buf
 * must hold 4 * QUOTE_WINDOW + 7 bytes. */
static void quote_spec(const spec_parser *p, size_t at, char *buf, size_t cap)
{
    size_t from = 0, to = p->len, n = 0;
    if (p->len > QUOTE_WINDOW) {
        from = at > QUOTE_WINDOW / 2 ? at - QUOTE_WINDOW / 2 : 0;
        to = from + QUOTE_WINDOW;
        if (to > p->len) {
            to = p->len;
            from = to - QUOTE_WINDOW;
        }
    }
    if (from > 0) n += (size_t)snprintf(buf + n, cap - n, "...");
    for (size_t i = from; i < to; i++) {
        unsigned char c = (unsigned char)p->text[i];
        if (c < 0x20 || c == 0x7f)
            n += (size_t)snprintf(buf + n, cap - n, "\\x%02x", c);
        else
            buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (p->text[to] != '\0') snprintf(buf + n, cap - n, "...");
}

/* Record a syntax error at byte `at`: the quoted spec, the position and the
 * reason, on one line. Returns -1. */
__attribute__((format(printf, 3, 4)))
static int fail_at(const spec_parser *p, size_t at, const char *fmt, ...)
{
    char reason[320], quote[4 * QUOTE_WINDOW + 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    quote_spec(p, at, quote, sizeof quote);
    return pk_fail("press spec '%s': position %zu: %s", quote, at, reason);
}

/* Read the identifier starting at the read position (its first byte already
 * checked) into dst; `what` names it in the error when it does not fit. */
static int read_identifier(spec_parser *p, char *dst, size_t cap, const char *what)
{
    size_t start = p->pos;
    while (is_ident_char(peek(p))) p->pos++;
    size_t n = p->pos - start;
    if (n >= cap) return fail_at(p, start, "%s is longer than %zu bytes", what, cap - 1);
    memcpy(dst, p->text + start, n);
    dst[n] = '\0';
    return 0;
}

/* Parse one parameter at the read position and append it to s: key=value, or
 * a bare value (taken as ratio) when bare_allowed. */
static int parse_param(spec_parser *p, pk_spec *s, int bare_allowed)
{
    size_t start = p->pos;
    if (s->n_params == PK_SPEC_MAX_PARAMS)
        return fail_at(p, start, "press '%s' has more than %d parameters", s->name,
                       PK_SPEC_MAX_PARAMS);
    char key[sizeof s->params[0].key];
    int bare = !key_follows(p, start);
    if (!bare) {
        if (read_identifier(p, key, sizeof key, "a parameter name") < 0) return -1;
        skip_space(p);
        p->pos++; /* the '=' key_follows saw */
        skip_space(p);
    } else if (peek(p) == '=') {
        return fail_at(p, start, "missing parameter name before '='");
    } else if (!is_value_char(peek(p))) {
        return fail_at(p, start, "expected a parameter, found %s", describe_found(p, start));
    } else {
        strcpy(key, "ratio");
    }

    size_t value_at = p->pos;
    while (is_value_char(peek(p))) p->pos++;
    size_t n = p->pos - value_at;
    size_t after = skip_space_from(p, p->pos);
    if (n == 0)
        return fail_at(p, value_at, "empty value for '%s' (found %s)", key,
                       describe_found(p, value_at));
    if (p->text[after] == '=') {
        if (bare)
            return fail_at(p, start,
                           "'%.*s' is not a valid parameter name "
                           "(lowercase letters, digits and '_', not starting with a digit)",
                           (int)(n < 40 ? n : 40), p->text + start);
        return fail_at(p, after, "unexpected '=' in the value of '%s'", key);
    }
    if (bare && !bare_allowed)
        return fail_at(p, start,
                       "a bare value is allowed only as the first parameter; write key=value");
    if (n >= sizeof s->params[0].value)
        return fail_at(p, value_at, "the value of '%s' is longer than %zu bytes", key,
                       sizeof s->params[0].value - 1);
    for (int i = 0; i < s->n_params; i++)
        if (strcmp(s->params[i].key, key) == 0)
            return fail_at(p, start, "duplicate parameter '%s' (first at position %d)", key,
                           s->params[i].pos);

    int i = s->n_params++;
    strcpy(s->params[i].key, key);
    memcpy(s->params[i].value, p->text + value_at, n);
    s->params[i].value[n] = '\0';
    s->params[i].pos = (int)start;
    return 0;
}

/* Parse a comma-separated parameter list into s. Inside composed[...]
 * (in_list) the list stops before a comma that is not followed by key=, since
 * that comma starts the next press. */
static int parse_params(spec_parser *p, pk_spec *s, int bare_allowed, int in_list)
{
    for (;;) {
        skip_space(p);
        if (parse_param(p, s, bare_allowed) < 0) return -1;
        bare_allowed = 0;
        skip_space(p);
        if (peek(p) != ',') return 0;
        if (in_list && !key_follows(p, p->pos + 1)) return 0;
        p->pos++;
    }
}

static pk_spec *parse_spec(spec_parser *p, int depth, int in_list);

/* After a name other than composed: the optional (inner spec). */
static int parse_inner(spec_parser *p, pk_spec *s, int depth)
{
    if (peek(p) == '[')
        return fail_at(p, p->pos, "only 'composed' takes a list of presses in [...]");
    if (peek(p) != '(') return 0;
    size_t open = p->pos++;
    pk_spec *child = parse_spec(p, depth + 1, 0);
    if (!child) return -1;
    s->children[s->n_children++] = child;
    skip_space(p);
    if (peek(p) != ')')
        return fail_at(p, p->pos, "expected ')' to close '%s(' at position %zu, found %s",
                       s->name, open, describe_found(p, p->pos));
    p->pos++;
    return 0;
}

/* After the name composed: '[' items ']'. Each item is a press, or key=value
 * parameters that continue the press before it. */
static int parse_list(spec_parser *p, pk_spec *s, int depth)
{
    if (peek(p) != '[')
        return fail_at(p, p->pos, "expected '[' after 'composed', found %s",
                       describe_found(p, p->pos));
    size_t open = p->pos++;
    skip_space(p);
    if (peek(p) == ']') return fail_at(p, p->pos, "composed[] needs at least one press");
    int another = 1;
    while (another) {
        skip_space(p);
        if (s->n_children == PK_SPEC_MAX_CHILDREN)
            return fail_at(p, p->pos, "composed[...] holds more than %d presses",
                           PK_SPEC_MAX_CHILDREN);
        pk_spec *child = parse_spec(p, depth + 1, 1);
        if (!child) return -1;
        s->children[s->n_children++] = child;
        skip_space(p);
        another = 0;
        while (peek(p) == ',') {
            p->pos++;
            if (!key_follows(p, p->pos)) {
                another = 1;
                break;
            }
            if (parse_params(p, child, 0, 1) < 0) return -1;
            skip_space(p);
        }
    }
    if (peek(p) != ']')
        return fail_at(p, p->pos,
                       "expected ',' or ']' to close 'composed[' at position %zu, found %s", open,
                       describe_found(p, p->pos));
    p->pos++;
    return 0;
}

/* Parse one spec at the read position: name, inner spec or list, parameters.
 * depth counts the presses it is nested in, itself included. Returns the new
 * node, or NULL with the error set and nothing left allocated. */
static pk_spec *parse_spec(spec_parser *p, int depth, int in_list)
{
    skip_space(p);
    size_t start = p->pos;
    if (!is_ident_start(peek(p))) {
        fail_at(p, start, "expected a press name, found %s", describe_found(p, start));
        return NULL;
    }
    if (depth > PK_SPEC_MAX_DEPTH) {
        fail_at(p, start, "presses nest deeper than %d levels", PK_SPEC_MAX_DEPTH);
        return NULL;
    }
    pk_spec *s = pk_calloc(1, sizeof *s, "press spec");
    if (!s) return NULL;
    s->pos = (int)start;
    if (read_identifier(p, s->name, sizeof s->name, "a press name") < 0) goto fail;
    skip_space(p);
    int rc = strcmp(s->name, "composed") == 0 ? parse_list(p, s, depth)
                                               : parse_inner(p, s, depth);
    if (rc < 0) goto fail;
    skip_space(p);
    if (peek(p) == ':') {
        p->pos++;
        if (parse_params(p, s, 1, in_list) < 0) goto fail;
    }
    return s;
fail:
    pk_spec_free(s);
    return NULL;
}

/* Entry point: bound the length, parse one spec, refuse anything after it. */
int pk_spec_parse(const char *text, pk_spec **out)
{
    if (!out) return pk_fail("pk_spec_parse: no place to store the result");
    *out = NULL;
    if (!text) return pk_fail("press spec is missing");
    spec_parser p = {.text = text};
    while (p.len <= PK_SPEC_MAX_LEN && text[p.len] != '\0') p.len++;
    if (p.len > PK_SPEC_MAX_LEN)
        return fail_at(&p, PK_SPEC_MAX_LEN, "the spec is longer than %d bytes",
                       PK_SPEC_MAX_LEN);
    pk_spec *s = parse_spec(&p, 1, 0);
    if (!s) return -1;
    skip_space(&p);
    if (p.pos < p.len) {
        fail_at(&p, p.pos, "unexpected %s after a complete press spec",
                describe_found(&p, p.pos));
        pk_spec_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

/* Free a node and, recursively, its children (at most PK_SPEC_MAX_DEPTH deep
 * for parsed trees). */
void pk_spec_free(pk_spec *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_children && i < PK_SPEC_MAX_CHILDREN; i++)
        pk_spec_free(s->children[i]);
    pk_free(s);
}

/* Linear lookup: a press has at most PK_SPEC_MAX_PARAMS parameters. */
const char *pk_spec_get(const pk_spec *s, const char *key)
{
    if (!s || !key) return NULL;
    for (int i = 0; i < s->n_params && i < PK_SPEC_MAX_PARAMS; i++)
        if (strcmp(s->params[i].key, key) == 0) return s->params[i].value;
    return NULL;
}

/* Accumulates canonical text; len keeps counting past cap so the caller can
 * tell that, and by how much, the text did not fit. */
typedef struct {
    char *out;
    size_t cap, len;
} spec_writer;

/* Append n bytes when they fit (keeping room for the NUL). */
static void put_bytes(spec_writer *w, const char *bytes, size_t n)
{
    if (w->out && w->len + n < w->cap) memcpy(w->out + w->len, bytes, n);
    w->len += n;
}

static void put(spec_writer *w, const char *str) { put_bytes(w, str, strlen(str)); }

/* True when field (a char array of cap bytes, perhaps not NUL-terminated in a
 * tree built by hand) holds an identifier the parser accepts. */
static int valid_identifier(const char *field, size_t cap)
{
    if (!memchr(field, '\0', cap) || !is_ident_start(field[0])) return 0;
    for (const char *c = field + 1; *c; c++)
        if (!is_ident_char(*c)) return 0;
    return 1;
}

/* True when field holds a non-empty value the parser accepts. */
static int valid_value(const char *field, size_t cap)
{
    if (!memchr(field, '\0', cap) || field[0] == '\0') return 0;
    for (const char *c = field; *c; c++)
        if (!is_value_char(*c)) return 0;
    return 1;
}

/* Write one node and its children, checking that the node is one the parser
 * could produce, so that the text always parses back to the same tree. */
static int write_spec(spec_writer *w, const pk_spec *s, int depth)
{
    if (depth > PK_SPEC_MAX_DEPTH)
        return pk_fail("cannot format press spec: presses nest deeper than %d levels",
                       PK_SPEC_MAX_DEPTH);
    if (!valid_identifier(s->name, sizeof s->name))
        return pk_fail("cannot format press spec: invalid press name");
    int composed = strcmp(s->name, "composed") == 0;
    int max_children = composed ? PK_SPEC_MAX_CHILDREN : 1;
    if (s->n_children < composed || s->n_children > max_children)
        return pk_fail("cannot format press spec: '%s' with %d inner presses", s->name,
                       s->n_children);
    if (s->n_params < 0 || s->n_params > PK_SPEC_MAX_PARAMS)
        return pk_fail("cannot format press spec: '%s' with %d parameters", s->name,
                       s->n_params);
    put(w, s->name);
    if (s->n_children > 0) put(w, composed ? "[" : "(");
    for (int i = 0; i < s->n_children; i++) {
        if (!s->children[i])
            return pk_fail("cannot format press spec: '%s' has a missing inner press", s->name);
        if (i > 0) put(w, ",");
        if (write_spec(w, s->children[i], depth + 1) < 0) return -1;
    }
    if (s->n_children > 0) put(w, composed ? "]" : ")");
    for (int i = 0; i < s->n_params; i++) {
        const char *key = s->params[i].key, *value = s->params[i].value;
        if (!valid_identifier(key, sizeof s->params[i].key) ||
            !valid_value(value, sizeof s->params[i].value))
            return pk_fail("cannot format press spec: '%s' has an invalid parameter %d",
                           s->name, i + 1);
        for (int j = 0; j < i; j++)
            if (strcmp(s->params[j].key, key) == 0)
                return pk_fail("cannot format press spec: '%s' has parameter '%s' twice",
                               s->name, key);
        put(w, i == 0 ? ":" : ",");
        if (i > 0 || strcmp(key, "ratio") != 0) {
            put(w, key);
            put(w, "=");
        }
        put(w, value);
    }
    return 0;
}

/* Canonical text of a tree; see spec.h. */
int pk_spec_format(const pk_spec *s, char *out, size_t cap)
{
    if (out && cap > 0) out[0] = '\0';
    if (!s) return pk_fail("cannot format press spec: no spec");
    spec_writer w = {.out = out, .cap = cap};
    if (write_spec(&w, s, 1) < 0) {
        if (out && cap > 0) out[0] = '\0';
        return -1;
    }
    if (!out || w.len >= cap || w.len > INT_MAX) {
        if (out && cap > 0) out[0] = '\0';
        return pk_fail("press spec needs %zu bytes, more than the %zu available", w.len + 1,
                       cap);
    }
    out[w.len] = '\0';
    return (int)w.len;
}

/* Shared body of the two double getters: hi_exclusive chooses [lo, hi) over
 * [lo, hi] and the bracket the error message shows. */
static int spec_double_in(const pk_spec *s, const char *key, double dflt, double lo, double hi,
                          int hi_exclusive, double *out)
{
    const char *text = pk_spec_get(s, key);
    if (!text) {
        *out = dflt;
        return 0;
    }
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || isnan(v))
        return pk_fail("press '%s': %s=%s is not a number", s->name, key, text);
    if (!(v >= lo && (hi_exclusive ? v < hi : v <= hi)))
        return pk_fail("press '%s': %s=%s is out of range [%g, %g%c", s->name, key, text, lo,
                       hi, hi_exclusive ? ')' : ']');
    *out = v;
    return 0;
}

/* A real parameter in [lo, hi]. */
int pk_spec_double(const pk_spec *s, const char *key, double dflt, double lo, double hi,
                   double *out)
{
    return spec_double_in(s, key, dflt, lo, hi, 0, out);
}

/* A real parameter in [lo, hi): ratios, which must leave something behind. */
int pk_spec_double_below(const pk_spec *s, const char *key, double dflt, double lo, double hi,
                         double *out)
{
    return spec_double_in(s, key, dflt, lo, hi, 1, out);
}

/* An integer parameter in [lo, hi], written in decimal. */
int pk_spec_int(const pk_spec *s, const char *key, int dflt, int lo, int hi, int *out)
{
    const char *text = pk_spec_get(s, key);
    if (!text) {
        *out = dflt;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0')
        return pk_fail("press '%s': %s=%s is not an integer", s->name, key, text);
    if (errno == ERANGE || v < lo || v > hi)
        return pk_fail("press '%s': %s=%s is out of range [%d, %d]", s->name, key, text, lo, hi);
    *out = (int)v;
    return 0;
}

/* True when key is one of the NULL-terminated list. */
static int key_allowed(const char *key, const char *const *allowed)
{
    for (; allowed && *allowed; allowed++)
        if (strcmp(*allowed, key) == 0) return 1;
    return 0;
}

/* Refuse a parameter the press does not know, listing the ones it does. */
int pk_spec_check_keys(const pk_spec *s, const char *const *allowed)
{
    for (int i = 0; s && i < s->n_params && i < PK_SPEC_MAX_PARAMS; i++) {
        const char *key = s->params[i].key;
        if (key_allowed(key, allowed)) continue;
        if (!allowed || !allowed[0])
            return pk_fail("press '%s': unknown parameter '%s' (it takes no parameters)",
                           s->name, key);
        char known[512];
        size_t n = 0;
        known[0] = '\0';
        for (const char *const *a = allowed; *a && n < sizeof known; a++)
            n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", a == allowed ? "" : ", ",
                                  *a);
        return pk_fail("press '%s': unknown parameter '%s' (known: %s)", s->name, key, known);
    }
    return 0;
}

void pk_spec_init(pk_spec *s, const char *name)
{
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
}

int pk_spec_add(pk_spec *s, const char *key, const char *value)
{
    if (s->n_params == PK_SPEC_MAX_PARAMS) return pk_fail("press '%s': too many parameters", s->name);
    if (strlen(key) >= sizeof s->params[0].key || strlen(value) >= sizeof s->params[0].value)
        return pk_fail("press '%s': parameter %s is too long", s->name, key);
    snprintf(s->params[s->n_params].key, sizeof s->params[0].key, "%s", key);
    snprintf(s->params[s->n_params].value, sizeof s->params[0].value, "%s", value);
    s->n_params++;
    return 0;
}
