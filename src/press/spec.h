/* Press specs: the text that names a KV-cache press and its parameters, as
 * given on the command line and shown in reports, e.g.
 *
 *   knorm:0.5
 *   adakv(snapkv:window=32):ratio=0.5,alpha=0.2
 *   composed[knorm:0.2,streaming_llm:0.3]
 *
 * pk_spec_parse checks the syntax only (the grammar is at the top of spec.c)
 * and builds a tree; which names and parameters exist, and what values they
 * take, is up to the press constructors, which read the tree with the typed
 * getters below. Every failing function records one line with pk_fail (see
 * util/error.h) and returns -1. */
#ifndef PIKV_PRESS_SPEC_H
#define PIKV_PRESS_SPEC_H

#include <stddef.h>

enum {
    PK_SPEC_MAX_PARAMS = 16,    /* parameters of one press */
    PK_SPEC_MAX_CHILDREN = 16,  /* items of composed[...] */
    PK_SPEC_MAX_DEPTH = 8,      /* presses nested in one another, the outermost included */
    PK_SPEC_MAX_LEN = 4096      /* bytes of spec text */
};

typedef struct pk_spec {
    char name[32];
    struct {
        char key[32];
        char value[256];
        int pos;                  /* byte offset of the key (of the value when bare) */
    } params[PK_SPEC_MAX_PARAMS]; /* in the order given; a bare first value gets key "ratio" */
    int n_params;
    struct pk_spec *children[PK_SPEC_MAX_CHILDREN]; /* the inner spec of name(...) (1 child),
                                                       or the items of composed[...] */
    int n_children;
    int pos;                      /* byte offset of the name in the original string */
} pk_spec;

/* Parse a whole spec into a tree (free it with pk_spec_free). On error *out is
 * NULL and the message quotes the spec and gives the byte position at fault. */
int pk_spec_parse(const char *text, pk_spec **out);

/* Free a tree and all its children; NULL does nothing. */
void pk_spec_free(pk_spec *s);

/* The value of parameter `key` of this press (not of its children), or NULL. */
const char *pk_spec_get(const pk_spec *s, const char *key);

/* Write the canonical text of a tree: no whitespace, a leading `ratio` written
 * as a bare value, continuation items of composed[...] folded into their press.
 * Parsing it gives back an equal tree (same names, keys, values, children).
 * Returns the length written (without the NUL), or -1 when it does not fit in
 * cap bytes or the tree is one the parser could not have produced. */
int pk_spec_format(const pk_spec *s, char *out, size_t cap);

/* Build a spec in code rather than from text: a press name, then parameters
 * added one by one (fails when there is no room or a value is too long). */
void pk_spec_init(pk_spec *s, const char *name);
int pk_spec_add(pk_spec *s, const char *key, const char *value);

/* Typed parameters. When `key` is absent *out = dflt; when present it must be
 * a whole number in range, else the error reads e.g.
 *   press 'snapkv': window=abc is not an integer
 *   press 'knorm': ratio=1.5 is out of range [0, 1)
 * pk_spec_double accepts [lo, hi]; pk_spec_double_below accepts [lo, hi), the
 * form for ratios (pass hi = 1); pk_spec_int accepts [lo, hi]. Values that are
 * not finite are refused. *out is left untouched on error. */
int pk_spec_double(const pk_spec *s, const char *key, double dflt, double lo, double hi,
                   double *out);
int pk_spec_double_below(const pk_spec *s, const char *key, double dflt, double lo, double hi,
                         double *out);
int pk_spec_int(const pk_spec *s, const char *key, int dflt, int lo, int hi, int *out);

/* Check that every parameter of this press is in `allowed` (a NULL-terminated
 * list; NULL means none), else fail with e.g.
 *   press 'knorm': unknown parameter 'windw' (known: ratio) */
int pk_spec_check_keys(const pk_spec *s, const char *const *allowed);

#endif
