/* Tests for the press spec parser (src/press/spec.c): the documented examples
 * and their trees, the canonical text and its round trip, every syntax error
 * with its exact position, the limits, the typed getters, unknown keys, and
 * allocation failure at every step. */
#include "check.h"
#include "util/mem.h"
#include "pikv.h"
#include "press/spec.h"

#include <stdarg.h>
#include <string.h>

/* A compact, independent rendering of a tree to compare against expectations:
 * name{key=value,...}<child;child>. */
static void dump_into(const pk_spec *s, char *buf, size_t cap, size_t *n)
{
    *n += (size_t)snprintf(buf + *n, *n < cap ? cap - *n : 0, "%s", s->name);
    for (int i = 0; i < s->n_params; i++)
        *n += (size_t)snprintf(buf + *n, *n < cap ? cap - *n : 0, "%s%s=%s", i ? "," : "{",
                               s->params[i].key, s->params[i].value);
    if (s->n_params) *n += (size_t)snprintf(buf + *n, *n < cap ? cap - *n : 0, "}");
    for (int i = 0; i < s->n_children; i++) {
        *n += (size_t)snprintf(buf + *n, *n < cap ? cap - *n : 0, "%s", i ? ";" : "<");
        dump_into(s->children[i], buf, cap, n);
    }
    if (s->n_children) *n += (size_t)snprintf(buf + *n, *n < cap ? cap - *n : 0, ">");
}

static const char *dump(const pk_spec *s)
{
    static char buf[8192];
    size_t n = 0;
    buf[0] = '\0';
    dump_into(s, buf, sizeof buf, &n);
    return buf;
}

/* True when two trees have the same names, parameters and children. */
static int same_tree(const pk_spec *a, const pk_spec *b)
{
    if (strcmp(a->name, b->name) || a->n_params != b->n_params || a->n_children != b->n_children)
        return 0;
    for (int i = 0; i < a->n_params; i++)
        if (strcmp(a->params[i].key, b->params[i].key) ||
            strcmp(a->params[i].value, b->params[i].value))
            return 0;
    for (int i = 0; i < a->n_children; i++)
        if (!same_tree(a->children[i], b->children[i])) return 0;
    return 1;
}

/* Parse text and compare its tree with the expected dump. */
static void expect_tree(const char *text, const char *expected)
{
    pk_spec *s = NULL;
    int rc = pk_spec_parse(text, &s);
    CHECK(rc == 0 && s, "'%s' should parse: %s", text, pikv_last_error());
    if (rc == 0)
        CHECK(strcmp(dump(s), expected) == 0, "'%s': got %s, want %s", text, dump(s), expected);
    pk_spec_free(s);
}

/* Format the tree of text, parse the result, and check that the tree is the
 * same and that formatting it again gives the same text. When canonical is not
 * NULL the formatted text must equal it. */
static void expect_round_trip(const char *text, const char *canonical)
{
    pk_spec *s = NULL, *again = NULL;
    char out[8192], out2[8192];
    if (pk_spec_parse(text, &s) < 0) {
        CHECK(0, "'%s' should parse: %s", text, pikv_last_error());
        return;
    }
    int len = pk_spec_format(s, out, sizeof out);
    CHECK(len >= 0 && (size_t)len == strlen(out), "format '%s': %d, %s", text, len,
          pikv_last_error());
    if (canonical)
        CHECK(strcmp(out, canonical) == 0, "format '%s' gave '%s', want '%s'", text, out,
              canonical);
    CHECK(pk_spec_parse(out, &again) == 0, "canonical '%s' should parse: %s", out,
          pikv_last_error());
    if (again) {
        CHECK(same_tree(s, again), "'%s' -> '%s' changed the tree: %s", text, out, dump(again));
        CHECK(pk_spec_format(again, out2, sizeof out2) == len && strcmp(out, out2) == 0,
              "formatting '%s' twice differs: '%s'", out, out2);
    }
    pk_spec_free(again);
    pk_spec_free(s);
}

/* Parse text, which must fail with "position POS: " followed by a reason that
 * contains `reason`; the message must be one line and *out must be NULL. */
static void expect_error(const char *text, size_t pos, const char *reason)
{
    pk_spec *s = (pk_spec *)&s; /* any non-NULL value, to see that it is cleared */
    pikv_clear_error();
    int rc = pk_spec_parse(text, &s);
    const char *msg = pikv_last_error();
    char where[64];
    snprintf(where, sizeof where, ": position %zu: ", pos);
    const char *at = strstr(msg, where);
    CHECK(rc == -1 && s == NULL, "'%s' should fail", text);
    CHECK(strncmp(msg, "press spec '", 12) == 0, "'%s': message starts badly: %s", text, msg);
    CHECK(at && strstr(at, reason), "'%s': want position %zu and '%s', got: %s", text, pos, reason,
          msg);
    CHECK(!strchr(msg, '\n'), "'%s': message spans lines: %s", text, msg);
    if (rc == 0) pk_spec_free(s);
}

/* The message left by the last failing call must equal `want`. */
static void expect_message(int rc, const char *want)
{
    CHECK(rc == -1, "should fail with: %s", want);
    CHECK(strcmp(pikv_last_error(), want) == 0, "message:\n  got  %s\n  want %s", pikv_last_error(),
          want);
}

/* printf into a static buffer, for building long specs. */
static const char *fmt_text(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

static const char *const examples[][2] = {
    {"none", "none"},
    {"knorm:0.5", "knorm{ratio=0.5}"},
    {"snapkv:ratio=0.5,window=64", "snapkv{ratio=0.5,window=64}"},
    {"snapkv:0.5,window=32,kernel=5", "snapkv{ratio=0.5,window=32,kernel=5}"},
    {"adakv(expected_attention):0.5", "adakv{ratio=0.5}<expected_attention>"},
    {"adakv(snapkv:window=32):ratio=0.5,alpha=0.2",
     "adakv{ratio=0.5,alpha=0.2}<snapkv{window=32}>"},
    {"chunkkv(knorm):ratio=0.3,chunk=20", "chunkkv{ratio=0.3,chunk=20}<knorm>"},
    {"per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/0.6",
     "per_layer{ratios=0.1/0.2/0.3/0.4/0.5/0.6}<knorm>"},
    {"composed[knorm:0.2,streaming_llm:0.3]",
     "composed<knorm{ratio=0.2};streaming_llm{ratio=0.3}>"},
    {"composed[snapkv:ratio=0.5,window=64,duo:ratio=0.5,pattern=models/x/duo]",
     "composed<snapkv{ratio=0.5,window=64};duo{ratio=0.5,pattern=models/x/duo}>"},
    {"decoding(knorm:0.5):every=16,target=512", "decoding{every=16,target=512}<knorm{ratio=0.5}>"},
    {"moe_router:router=eplb,experts=4,top_k=2,ratio=0.35",
     "moe_router{router=eplb,experts=4,top_k=2,ratio=0.35}"},
    {"eplb_duo:0.5", "eplb_duo{ratio=0.5}"},
};

/* Valid specs beyond the examples: whitespace, nesting, continuations, values. */
static const char *const more_valid[][2] = {
    {"  composed [ knorm : 0.2 ,\tstreaming_llm:0.3 ]\n",
     "composed<knorm{ratio=0.2};streaming_llm{ratio=0.3}>"},
    {"adakv ( snapkv : window = 32 , kernel=5 ) : 0.5",
     "adakv{ratio=0.5}<snapkv{window=32,kernel=5}>"},
    {"adakv(composed[knorm:0.2,snapkv:window=8]):0.5",
     "adakv{ratio=0.5}<composed<knorm{ratio=0.2};snapkv{window=8}>>"},
    {"composed[knorm,ratio=0.2,window=4,streaming_llm]",
     "composed<knorm{ratio=0.2,window=4};streaming_llm>"},
    {"composed[knorm:0.2, window = 3]", "composed<knorm{ratio=0.2,window=3}>"},
    {"composed[adakv(snapkv:window=32,kernel=5):0.5,knorm]",
     "composed<adakv{ratio=0.5}<snapkv{window=32,kernel=5}>;knorm>"},
    {"composed[composed[a,b],x=1,c]", "composed<composed{x=1}<a;b>;c>"},
    {"composed[knorm:0.2,streaming_llm:0.3]:ratio=0.5",
     "composed{ratio=0.5}<knorm{ratio=0.2};streaming_llm{ratio=0.3}>"},
    {"x:offset=-1,eps=1e-3,path=a:b/c.d,u=\xc3\xa9t\xc3\xa9",
     "x{offset=-1,eps=1e-3,path=a:b/c.d,u=\xc3\xa9t\xc3\xa9}"},
    {"knorm:-1", "knorm{ratio=-1}"},
    {"_:abc", "_{ratio=abc}"},
    {"a1_b2(c)", "a1_b2<c>"},
};

static void test_examples(void)
{
    for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
        expect_tree(examples[i][0], examples[i][1]);
        expect_round_trip(examples[i][0], NULL);
    }
    for (size_t i = 0; i < sizeof more_valid / sizeof more_valid[0]; i++) {
        expect_tree(more_valid[i][0], more_valid[i][1]);
        expect_round_trip(more_valid[i][0], NULL);
    }
}

/* Byte positions of names and parameters. */
static void test_positions(void)
{
    pk_spec *s = NULL;
    CHECK(pk_spec_parse("adakv(snapkv:window=32):ratio=0.5,alpha=0.2", &s) == 0, "parse");
    if (s) {
        CHECK(s->pos == 0 && s->children[0]->pos == 6, "name positions %d %d", s->pos,
              s->children[0]->pos);
        CHECK(s->children[0]->params[0].pos == 13, "window at %d", s->children[0]->params[0].pos);
        CHECK(s->params[0].pos == 24 && s->params[1].pos == 34, "ratio at %d, alpha at %d",
              s->params[0].pos, s->params[1].pos);
        CHECK(strcmp(pk_spec_get(s, "alpha"), "0.2") == 0, "get alpha");
        CHECK(pk_spec_get(s, "window") == NULL, "window belongs to the child");
        CHECK(strcmp(pk_spec_get(s->children[0], "window"), "32") == 0, "child window");
    }
    pk_spec_free(s);
    s = NULL;
    CHECK(pk_spec_parse("  knorm : 0.5", &s) == 0, "parse");
    if (s)
        CHECK(s->pos == 2 && s->params[0].pos == 10, "positions %d %d", s->pos, s->params[0].pos);
    pk_spec_free(s);
    CHECK(pk_spec_get(NULL, "ratio") == NULL, "get on NULL");
    pk_spec_free(NULL);
}

/* The canonical text: bare ratio, no whitespace, continuations folded. */
static void test_format(void)
{
    expect_round_trip("snapkv:ratio=0.5,window=64", "snapkv:0.5,window=64");
    expect_round_trip("moe_router:router=eplb,ratio=0.35", "moe_router:router=eplb,ratio=0.35");
    expect_round_trip(" composed[ knorm :0.2 , streaming_llm: 0.3 ] ",
                      "composed[knorm:0.2,streaming_llm:0.3]");
    expect_round_trip("composed[knorm,ratio=0.2,window=4,streaming_llm]",
                      "composed[knorm:0.2,window=4,streaming_llm]");
    expect_round_trip("composed[composed[a,b],x=1,c]", "composed[composed[a,b]:x=1,c]");
    expect_round_trip("adakv(snapkv:window=32):ratio=0.5,alpha=0.2",
                      "adakv(snapkv:window=32):0.5,alpha=0.2");

    /* Exactly enough room, one byte short, no room. */
    pk_spec *s = NULL;
    char out[64];
    pk_spec_parse("knorm:0.5", &s);
    CHECK(pk_spec_format(s, out, 10) == 9 && strcmp(out, "knorm:0.5") == 0, "fits in 10");
    expect_message(pk_spec_format(s, out, 9),
                   "press spec needs 10 bytes, more than the 9 available");
    CHECK(out[0] == '\0', "out is emptied when it does not fit");
    CHECK(pk_spec_format(s, NULL, 0) == -1, "no buffer");

    /* Trees the parser could not have produced are refused. */
    strcpy(s->name, "Knorm");
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: invalid press name");
    strcpy(s->name, "knorm");
    strcpy(s->params[0].value, "0,5");
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: 'knorm' has an invalid parameter 1");
    strcpy(s->params[0].value, "0.5");
    s->params[1] = s->params[0];
    s->n_params = 2;
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: 'knorm' has parameter 'ratio' twice");
    s->n_params = 1;
    s->children[0] = s; /* a cycle */
    s->n_children = 1;
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: presses nest deeper than 8 levels");
    s->children[0] = NULL;
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: 'knorm' has a missing inner press");
    s->n_children = 0;
    strcpy(s->name, "composed");
    expect_message(pk_spec_format(s, out, sizeof out),
                   "cannot format press spec: 'composed' with 0 inner presses");
    pk_spec_free(s);
}

/* Every kind of syntax error, with its exact position. */
static void test_errors(void)
{
    expect_error("", 0, "expected a press name, found end of text");
    expect_error("   ", 3, "expected a press name, found end of text");
    expect_error("composed[knorm:0.2,", 19, "expected a press name, found end of text");
    expect_error("knorm:0.5 x", 10, "unexpected 'x' after a complete press spec");
    expect_error("knorm:0.5)", 9, "unexpected ')' after a complete press spec");
    expect_error("composed[knorm]]", 15, "unexpected ']' after a complete press spec");
    expect_error("adakv(knorm", 11,
                 "expected ')' to close 'adakv(' at position 5, found end of text");
    expect_error("adakv(knorm x)", 12, "expected ')' to close 'adakv(' at position 5, found 'x'");
    expect_error("composed[knorm:0.2", 18,
                 "expected ',' or ']' to close 'composed[' at position 8, found end of text");
    expect_error("composed[knorm:0.2)", 18,
                 "expected ',' or ']' to close 'composed[' at position 8, found ')'");
    expect_error("snapkv:window=32,window=64", 17,
                 "duplicate parameter 'window' (first at position 7)");
    expect_error("knorm:0.5,ratio=0.3", 10, "duplicate parameter 'ratio' (first at position 6)");
    expect_error("composed[knorm:0.2,ratio=0.3]", 19,
                 "duplicate parameter 'ratio' (first at position 15)");
    expect_error("snapkv:window=", 14, "empty value for 'window' (found end of text)");
    expect_error("snapkv:window=,kernel=5", 14, "empty value for 'window' (found ',')");
    expect_error("snapkv:window=(3)", 14, "empty value for 'window' (found '(')");
    expect_error("knorm:ratio==0.5", 12, "empty value for 'ratio' (found '=')");
    expect_error("composed[]", 9, "composed[] needs at least one press");
    expect_error("composed[ ]", 10, "composed[] needs at least one press");
    expect_error("snapkv:window=32,0.5", 17, "a bare value is allowed only as the first parameter");
    expect_error("adakv(snapkv:window=32,0.5)", 23,
                 "a bare value is allowed only as the first parameter");
    expect_error("1knorm", 0, "expected a press name, found '1'");
    expect_error("composed[knorm:0.2,0.3]", 19, "expected a press name, found '0'");
    expect_error("Knorm", 0, "expected a press name, found 'K'");
    expect_error("knorm:", 6, "expected a parameter, found end of text");
    expect_error("knorm:,", 6, "expected a parameter, found ','");
    expect_error("knorm:0.5,", 10, "expected a parameter, found end of text");
    expect_error("knorm:=5", 6, "missing parameter name before '='");
    expect_error("knorm:Ratio=0.5", 6, "'Ratio' is not a valid parameter name");
    expect_error("knorm:0.5,Window=3", 10, "'Window' is not a valid parameter name");
    expect_error("knorm:ratio=0.5=1", 15, "unexpected '=' in the value of 'ratio'");
    expect_error("knorm[0.5]", 5, "only 'composed' takes a list of presses");
    expect_error("composed(knorm)", 8, "expected '[' after 'composed', found '('");
    expect_error("composed", 8, "expected '[' after 'composed', found end of text");
    expect_error("knorm()", 6, "expected a press name, found ')'");
    expect_error("adakv(", 6, "expected a press name, found end of text");
    expect_error("knorm(a)(b)", 8, "unexpected '(' after a complete press spec");
    expect_error("knorm\x01", 5, "unexpected byte 0x01 after a complete press spec");
    expect_error("knorm:\x7f", 6, "expected a parameter, found byte 0x7f");

    /* Control bytes are escaped so that the message stays on one line. */
    pk_spec *s = NULL;
    expect_message(
        pk_spec_parse("kn\norm", &s),
        "press spec 'kn\\x0aorm': position 3: unexpected 'o' after a complete press spec");
    expect_message(
        pk_spec_parse("composed[knorm:0.2,", &s),
        "press spec 'composed[knorm:0.2,': position 19: expected a press name, found end of text");
    CHECK(pk_spec_parse(NULL, &s) == -1 && s == NULL, "NULL text");
    CHECK(pk_spec_parse("knorm", NULL) == -1, "NULL out");
}

/* Limits on name, key and value lengths, parameters, items, depth and text. */
static void test_limits(void)
{
    char text[8192], name[64], value[300];
    memset(name, 'a', 31);
    name[31] = '\0';
    pk_spec *s = NULL;
    CHECK(pk_spec_parse(fmt_text(text, sizeof text, "%s:%s=1", name, name), &s) == 0 &&
              strlen(s->name) == 31,
          "31-byte name and key");
    pk_spec_free(s);
    s = NULL;
    name[31] = 'a';
    name[32] = '\0';
    expect_error(fmt_text(text, sizeof text, "%s", name), 0,
                 "a press name is longer than 31 bytes");
    expect_error(fmt_text(text, sizeof text, "k:%s=1", name), 2,
                 "a parameter name is longer than 31 bytes");
    expect_error(fmt_text(text, sizeof text, "composed[k,%s=1]", name), 11,
                 "a parameter name is longer than 31 bytes");

    memset(value, '7', 255);
    value[255] = '\0';
    CHECK(pk_spec_parse(fmt_text(text, sizeof text, "k:v=%s", value), &s) == 0 &&
              strlen(pk_spec_get(s, "v")) == 255,
          "255-byte value");
    pk_spec_free(s);
    s = NULL;
    value[255] = '7';
    value[256] = '\0';
    expect_error(fmt_text(text, sizeof text, "k:v=%s", value), 4,
                 "the value of 'v' is longer than 255 bytes");

    /* 16 parameters, then a 17th at byte 2 + 6 * 16. */
    size_t n = (size_t)snprintf(text, sizeof text, "k:");
    for (int i = 0; i < 17; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%sp%02d=1", i ? "," : "", i);
    text[n - 6] = '\0';
    CHECK(pk_spec_parse(text, &s) == 0 && s->n_params == 16, "16 parameters");
    pk_spec_free(s);
    s = NULL;
    text[n - 6] = ',';
    expect_error(text, 98, "press 'k' has more than 16 parameters");

    /* 16 items, then a 17th at byte 9 + 2 * 16. */
    n = (size_t)snprintf(text, sizeof text, "composed[");
    for (int i = 0; i < 17; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%sa", i ? "," : "");
    snprintf(text + n, sizeof text - n, "]");
    expect_error(text, 41, "composed[...] holds more than 16 presses");
    text[n - 2] = ']';
    text[n - 1] = '\0';
    CHECK(pk_spec_parse(text, &s) == 0 && s->n_children == 16, "16 items");
    pk_spec_free(s);
    s = NULL;

    /* Eight levels parse; the ninth name, at byte 16, is refused. */
    expect_tree("p(p(p(p(p(p(p(p)))))))", "p<p<p<p<p<p<p<p>>>>>>>");
    expect_error("p(p(p(p(p(p(p(p(p))))))))", 16, "presses nest deeper than 8 levels");
    expect_error("composed[p(composed[p(composed[p(composed[p(q)])])])]", 44,
                 "presses nest deeper than 8 levels");
    n = 0;
    for (int i = 0; i < 2000; i++) n += (size_t)snprintf(text + n, sizeof text - n, "a(");
    expect_error(text, 16, "presses nest deeper than 8 levels");

    /* 4096 bytes parse; 4097 are refused at byte 4096, quoting a window. */
    memset(text, ' ', PK_SPEC_MAX_LEN);
    memcpy(text, "knorm", 5);
    text[PK_SPEC_MAX_LEN] = '\0';
    CHECK(pk_spec_parse(text, &s) == 0, "4096 bytes: %s", pikv_last_error());
    pk_spec_free(s);
    s = NULL;
    text[PK_SPEC_MAX_LEN] = ' ';
    text[PK_SPEC_MAX_LEN + 1] = '\0';
    expect_error(text, 4096, "the spec is longer than 4096 bytes");
    CHECK(strlen(pikv_last_error()) < 300, "long spec quoted as a window: %s", pikv_last_error());

    /* An error deep in a long spec quotes the bytes around it. */
    memset(text, ' ', 1000);
    memcpy(text + 990, "knorm:0.5 !", 11);
    text[1001] = '\0';
    expect_error(text, 1000, "unexpected '!' after a complete press spec");
    CHECK(strstr(pikv_last_error(), "press spec '...") && strstr(pikv_last_error(), "knorm:0.5 !'"),
          "window around the error: %s", pikv_last_error());
    text[1001] = ' ';
    memset(text + 1001, ' ', 200);
    text[1201] = '\0';
    expect_error(text, 1000, "unexpected '!'");
    CHECK(strstr(pikv_last_error(), "knorm:0.5 !") && strstr(pikv_last_error(), " ...': position"),
          "window on both sides: %s", pikv_last_error());
}

/* The typed getters: defaults, ranges, and their messages. */
static void test_getters(void)
{
    pk_spec *s = NULL;
    double d = -7;
    int v = -7;
    pk_spec_parse("knorm:1.5", &s);
    expect_message(pk_spec_double_below(s, "ratio", 0.5, 0, 1, &d),
                   "press 'knorm': ratio=1.5 is out of range [0, 1)");
    CHECK(d == -7, "untouched on error");
    expect_message(pk_spec_double(s, "ratio", 0.5, 0, 1, &d),
                   "press 'knorm': ratio=1.5 is out of range [0, 1]");
    CHECK(pk_spec_double(s, "ratio", 0.5, 0, 2, &d) == 0 && d == 1.5, "closed range");
    CHECK(pk_spec_double(s, "alpha", 0.25, 0, 1, &d) == 0 && d == 0.25, "absent: default");
    CHECK(pk_spec_int(s, "window", 64, 1, 4096, &v) == 0 && v == 64, "absent int: default");
    expect_message(pk_spec_int(s, "ratio", 1, 0, 9, &v),
                   "press 'knorm': ratio=1.5 is not an integer");
    pk_spec_free(s);

    static const struct {
        const char *text;
        int ok;
        double want;
        const char *message;
    } ratios[] = {
        {"knorm:0", 1, 0, NULL},
        {"knorm:0.999", 1, 0.999, NULL},
        {"knorm:5e-1", 1, 0.5, NULL},
        {"knorm:1", 0, 0, "press 'knorm': ratio=1 is out of range [0, 1)"},
        {"knorm:-0.1", 0, 0, "press 'knorm': ratio=-0.1 is out of range [0, 1)"},
        {"knorm:abc", 0, 0, "press 'knorm': ratio=abc is not a number"},
        {"knorm:0.5x", 0, 0, "press 'knorm': ratio=0.5x is not a number"},
        {"knorm:nan", 0, 0, "press 'knorm': ratio=nan is not a number"},
        {"knorm:inf", 0, 0, "press 'knorm': ratio=inf is out of range [0, 1)"},
        {"knorm:1e999", 0, 0, "press 'knorm': ratio=1e999 is out of range [0, 1)"},
    };
    for (size_t i = 0; i < sizeof ratios / sizeof ratios[0]; i++) {
        s = NULL;
        pk_spec_parse(ratios[i].text, &s);
        int rc = pk_spec_double_below(s, "ratio", 0.5, 0, 1, &d);
        if (ratios[i].ok)
            CHECK(rc == 0 && d == ratios[i].want, "%s: %d %g", ratios[i].text, rc, d);
        else
            expect_message(rc, ratios[i].message);
        pk_spec_free(s);
    }

    static const struct {
        const char *text;
        int ok;
        int want;
        const char *message;
    } windows[] = {
        {"snapkv:window=1", 1, 1, NULL},
        {"snapkv:window=4096", 1, 4096, NULL},
        {"snapkv:window=+12", 1, 12, NULL},
        {"snapkv:window=abc", 0, 0, "press 'snapkv': window=abc is not an integer"},
        {"snapkv:window=1.5", 0, 0, "press 'snapkv': window=1.5 is not an integer"},
        {"snapkv:window=1e3", 0, 0, "press 'snapkv': window=1e3 is not an integer"},
        {"snapkv:window=0", 0, 0, "press 'snapkv': window=0 is out of range [1, 4096]"},
        {"snapkv:window=4097", 0, 0, "press 'snapkv': window=4097 is out of range [1, 4096]"},
        {"snapkv:window=-3", 0, 0, "press 'snapkv': window=-3 is out of range [1, 4096]"},
        {"snapkv:window=99999999999999999999", 0, 0,
         "press 'snapkv': window=99999999999999999999 is out of range [1, 4096]"},
    };
    for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) {
        s = NULL;
        pk_spec_parse(windows[i].text, &s);
        int rc = pk_spec_int(s, "window", 64, 1, 4096, &v);
        if (windows[i].ok)
            CHECK(rc == 0 && v == windows[i].want, "%s: %d %d", windows[i].text, rc, v);
        else
            expect_message(rc, windows[i].message);
        pk_spec_free(s);
    }
    s = NULL;
    pk_spec_parse("x:n=-2147483648", &s);
    CHECK(pk_spec_int(s, "n", 0, -2147483647 - 1, 0, &v) == 0 && v == -2147483647 - 1, "INT_MIN");
    pk_spec_free(s);
}

/* Unknown parameters are named with the known ones. */
static void test_check_keys(void)
{
    static const char *const ratio_only[] = {"ratio", NULL};
    static const char *const snapkv_keys[] = {"ratio", "window", "kernel", NULL};
    static const char *const nothing[] = {NULL};
    pk_spec *s = NULL;
    pk_spec_parse("knorm:windw=3", &s);
    expect_message(pk_spec_check_keys(s, ratio_only),
                   "press 'knorm': unknown parameter 'windw' (known: ratio)");
    pk_spec_free(s);
    s = NULL;
    pk_spec_parse("snapkv:0.5,window=3,kernal=5", &s);
    expect_message(pk_spec_check_keys(s, snapkv_keys),
                   "press 'snapkv': unknown parameter 'kernal' (known: ratio, window, kernel)");
    pk_spec_free(s);
    s = NULL;
    pk_spec_parse("snapkv:0.5,window=3,kernel=5", &s);
    CHECK(pk_spec_check_keys(s, snapkv_keys) == 0, "all known");
    pk_spec_free(s);
    s = NULL;
    pk_spec_parse("none:0.5", &s);
    expect_message(pk_spec_check_keys(s, nothing),
                   "press 'none': unknown parameter 'ratio' (it takes no parameters)");
    expect_message(pk_spec_check_keys(s, NULL),
                   "press 'none': unknown parameter 'ratio' (it takes no parameters)");
    pk_spec_free(s);
    s = NULL;
    pk_spec_parse("none", &s);
    CHECK(pk_spec_check_keys(s, NULL) == 0, "no parameters, none allowed");
    pk_spec_free(s);
}

/* Make every allocation of a parse fail in turn: each must return -1 with an
 * out-of-memory message and leave nothing allocated (LeakSanitizer checks). */
static void test_alloc_failures(void)
{
    static const char *const texts[] = {
        "composed[adakv(snapkv:window=32):0.5,chunkkv(knorm):ratio=0.3,chunk=20,decoding(knorm:0.5)"
        ":every=16]",
        "adakv(composed[knorm:0.2,snapkv:window=8]):0.5",
    };
    static const int n_nodes[] = {7, 4};
    for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
        int failures = 0;
        for (long n = 1; n < 100; n++) {
            pk_spec *s = (pk_spec *)&s;
            pikv_clear_error();
            pk_test_fail_alloc_after(n);
            int rc = pk_spec_parse(texts[t], &s);
            pk_test_fail_alloc_after(0);
            if (rc == 0) {
                pk_spec_free(s);
                break;
            }
            failures++;
            CHECK(rc == -1 && s == NULL, "allocation %ld: result not cleared", n);
            CHECK(strstr(pikv_last_error(), "out of memory"), "allocation %ld: %s", n,
                  pikv_last_error());
        }
        CHECK(failures == n_nodes[t], "%s: %d allocations failed, want %d", texts[t], failures,
              n_nodes[t]);
    }
}

int main(void)
{
    test_examples();
    test_positions();
    test_format();
    test_errors();
    test_limits();
    test_getters();
    test_check_keys();
    test_alloc_failures();
    return check_done("spec");
}
