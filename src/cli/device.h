/* --device: where a command runs. The CPU engine is in every build; the CUDA
 * engine only in the one `make cuda` makes (build-cuda/pikv), and only where
 * an NVIDIA GPU is usable. */
#ifndef PIKV_CLI_DEVICE_H
#define PIKV_CLI_DEVICE_H

#include "cli/args.h"
#include "pikv.h"

typedef enum { CLI_DEVICE_CPU, CLI_DEVICE_CUDA } cli_device;

/* The --device line of a command's options; dest is a const char *. */
#define CLI_DEVICE_OPT(dest) \
    {"--device", NULL, OPT_STRING, (dest), "cpu (default) or cuda (build-cuda/pikv; the GPU keeps weights and KV in --weights' type, bf16 unless f32/f16)", NULL}

/* The device a --device value names (NULL: cpu). An unknown name is a usage
 * error (returns 2); cuda in a build without the CUDA engine, or without a
 * usable GPU, says which and returns 1. Errors are printed. */
int cli_device_parse(const cli_command *cmd, const char *name, cli_device *out);

/* For a command whose sessions may run on the device: parse --device, and
 * for cuda point params at the GPU engine with --weights as its storage type
 * (bf16 unless f32 or f16) and have the host load the model in float32 (the
 * engine converts it once), *load_weights then being "f32"; elsewhere
 * *load_weights is `weights`. --kv-type flags are refused on the GPU (its
 * cache is in the weights' type). Returns 0, or prints the error and returns
 * 1 or 2 like cli_device_parse. */
int cli_device_session(const cli_command *cmd, const char *name, const char *weights, const cli_kv_flags *kv,
                       pikv_session_params *params, const char **load_weights, cli_device *out);

/* The machine a report names: cli_machine's CPU, or for cuda the GPU and
 * its driver, then the host's CPU. */
void cli_device_describe(cli_device d, char *out, int cap);

#endif
