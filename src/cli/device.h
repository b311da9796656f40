/* --device: where `generate` and `bench` run. The CPU engine is in every
 * build; the CUDA engine only in the one `make cuda` makes (build-cuda/pikv),
 * and only where an NVIDIA GPU is usable. */
#ifndef PIKV_CLI_DEVICE_H
#define PIKV_CLI_DEVICE_H

#include "cli/args.h"

typedef enum { CLI_DEVICE_CPU, CLI_DEVICE_CUDA } cli_device;

/* The --device line of a command's options; dest is a const char *. */
#define CLI_DEVICE_OPT(dest) \
    {"--device", NULL, OPT_STRING, (dest), "cpu (default) or cuda (build-cuda/pikv; the GPU keeps weights and KV in --weights' type, bf16 unless f32/f16)", NULL}

/* The device a --device value names (NULL: cpu). An unknown name is a usage
 * error (returns 2); cuda in a build without the CUDA engine, or without a
 * usable GPU, says which and returns 1. Errors are printed. */
int cli_device_parse(const cli_command *cmd, const char *name, cli_device *out);

/* For a command that has no GPU path yet: 0 for cpu, else prints why and
 * returns 2. */
int cli_device_cpu_only(const cli_command *cmd, const char *name, const char *why);

#endif
