#include "cli/device.h"

#include <string.h>

#ifdef PIKV_CUDA
#include "backend/cuda/engine.h"
#include "pikv.h"
#endif

/* The device a --device value names, before asking whether it is usable:
 * 0 with *is_cuda set, or 2 (printed) for an unknown name. */
static int device_name(const cli_command *cmd, const char *name, int *is_cuda)
{
    *is_cuda = name && strcmp(name, "cuda") == 0;
    if (!name || *is_cuda || strcmp(name, "cpu") == 0) return 0;
    return cli_error(cmd, "--device: unknown device '%s' (known: cpu, cuda)", name), 2;
}

int cli_device_parse(const cli_command *cmd, const char *name, cli_device *out)
{
    int is_cuda, rc;
    *out = CLI_DEVICE_CPU;
    if ((rc = device_name(cmd, name, &is_cuda)) || !is_cuda) return rc;
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
    int is_cuda, rc;
    if ((rc = device_name(cmd, name, &is_cuda)) || !is_cuda) return rc;
    return cli_error(cmd, "--device cuda: %s", why), 2;
}
