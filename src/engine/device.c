/* The registry of device engines (see engine/device.h). */
#include "engine/device.h"
#include "util/error.h"

#include <string.h>

enum { MAX_DEVICES = 4 };

static const pk_device_ops *registered[MAX_DEVICES];
static int n_registered;

int pk_device_register(const pk_device_ops *ops)
{
    if (!ops || !ops->name) return pk_fail("device: registering an engine without a name");
    for (int i = 0; i < n_registered; i++)
        if (strcmp(registered[i]->name, ops->name) == 0) {
            registered[i] = ops;
            return 0;
        }
    if (n_registered == MAX_DEVICES) return pk_fail("device '%s': no room for another engine", ops->name);
    registered[n_registered++] = ops;
    return 0;
}

const pk_device_ops *pk_device_find(const char *name)
{
    for (int i = 0; i < n_registered; i++)
        if (strcmp(registered[i]->name, name) == 0) return registered[i];
    if (strcmp(name, "cuda") == 0)
        pk_fail("device 'cuda': this build of pikv has no CUDA engine (build it with `make cuda`)");
    else
        pk_fail("device '%s': unknown (known: cpu, cuda)", name);
    return NULL;
}
