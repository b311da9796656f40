#include "cli/device.h"

#include <stdio.h>
#include <string.h>

#ifdef PIKV_CUDA
#include "backend/cuda/engine.h"
#include "engine/cuda/session_cuda.h"
#endif

int cli_device_parse(const cli_command *cmd, const char *name, cli_device *out)
{
    *out = CLI_DEVICE_CPU;
    if (!name || strcmp(name, "cpu") == 0) return 0;
    if (strcmp(name, "cuda") != 0) return cli_error(cmd, "--device: unknown device '%s' (known: cpu, cuda)", name), 2;
#ifdef PIKV_CUDA
    if (!pk_cuda_available() || pk_cuda_device_register()) return cli_error(cmd, "--device cuda: %s", pikv_last_error());
    *out = CLI_DEVICE_CUDA;
    return 0;
#else
    return cli_error(cmd, "--device cuda: this pikv was built without the CUDA engine (build it with `make cuda`: "
                          "build-cuda/pikv)");
#endif
}

void cli_device_describe(cli_device d, char *out, int cap)
{
    char host[256];
    cli_machine(host, sizeof host);
#ifdef PIKV_CUDA
    char gpu[256];
    if (d == CLI_DEVICE_CUDA && pk_cuda_describe(gpu, sizeof gpu) == 0) {
        snprintf(out, (size_t)cap, "%s; host %s", gpu, host);
        return;
    }
#endif
    (void)d;
    snprintf(out, (size_t)cap, "%s", host);
}

int cli_device_session(const cli_command *cmd, const char *name, const char *weights, const cli_kv_flags *kv,
                       pikv_session_params *params, const char **load_weights, cli_device *out)
{
    *load_weights = weights;
    int rc = cli_device_parse(cmd, name, out);
    if (rc || *out == CLI_DEVICE_CPU) return rc;
    if (kv->both || kv->k || kv->v)
        return cli_error(cmd, "--device cuda: the GPU stores the KV cache in the --weights type (bf16 unless f32 or "
                              "f16), so --kv-type does not apply there"),
               2;
    if (weights && cli_parse_weights(cmd, weights, &params->device_weights)) return 2;
    params->device = "cuda";
    *load_weights = "f32";
    return 0;
}
