#include "cli/device.h"

#include <string.h>

#ifdef PIKV_CUDA
#include "backend/cuda/engine.h"
#include "pikv.h"
#endif

int cli_device_parse(const cli_command *cmd, const char *name, cli_device *out)
{
    *out = CLI_DEVICE_CPU;
    if (!name || strcmp(name, "cpu") == 0) return 0;
    if (strcmp(name, "cuda") != 0) return cli_error(cmd, "--device: unknown device '%s' (known: cpu, cuda)", name), 2;
#ifdef PIKV_CUDA
    if (!pk_cuda_available()) return cli_error(cmd, "--device cuda: %s", pikv_last_error());
    *out = CLI_DEVICE_CUDA;
    return 0;
#else
    return cli_error(cmd, "--device cuda: this pikv was built without the CUDA engine (build it with `make cuda`: "
                          "build-cuda/pikv)");
#endif
}

int cli_device_cpu_only(const cli_command *cmd, const char *name, const char *why)
{
    if (!name || strcmp(name, "cpu") == 0) return 0;
    if (strcmp(name, "cuda") != 0) return cli_error(cmd, "--device: unknown device '%s' (known: cpu, cuda)", name), 2;
    return cli_error(cmd, "--device cuda: %s", why), 2;
}
