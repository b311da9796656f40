/* Sessions on the CUDA engine: the device operations (engine/device.h) that
 * a session made with pikv_session_params.device = "cuda" sends its calls
 * to, in the build that has the engine (make cuda). */
#ifndef PIKV_ENGINE_CUDA_SESSION_CUDA_H
#define PIKV_ENGINE_CUDA_SESSION_CUDA_H

/* Register the CUDA engine under "cuda" (once, before sessions are made). */
int pk_cuda_device_register(void);

#endif
