/* Where the `pikv` command finds what it ships with: the bundled model
 * (models/pikv-ref-14m and its Duo pattern) and the task text (data/), for
 * --model and --haystack when they are not given.
 *
 * One data directory holds both, laid out as in the source tree. It is the
 * first of:
 *   1. $PIKV_DATA_DIR;
 *   2. relative to the executable (/proc/self/exe): ../share/pikv for an
 *      installed pikv (PREFIX/bin/pikv), .. for a build in the source tree
 *      (build/pikv) -- each only when it holds the bundled model;
 *   3. the data directory compiled in at build time (PREFIX/share/pikv).
 * So an installed pikv works from any directory, and keeps working when its
 * prefix is moved as a whole. */
#ifndef PIKV_CLI_DATADIR_H
#define PIKV_CLI_DATADIR_H

/* The data directory (never NULL; the compiled-in one when nothing else fits). */
const char *cli_data_dir(void);

/* The model directory to use: --model, else $PIKV_MODEL, else the bundled model
 * DATA_DIR/models/pikv-ref-14m. */
const char *cli_model_dir(const char *flag_value);

/* The haystack text for needle tasks: --haystack, else DATA_DIR/data/haystack.txt. */
const char *cli_haystack_path(const char *flag_value);

#endif
