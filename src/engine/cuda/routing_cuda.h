/* Query-time routing (moe_router with route=1) of one sequence of the CUDA
 * engine, built only by `make cuda`.
 *
 * The press compresses the sequence on the GPU like any moe_router and leaves
 * its route table (router/route.h): each head's expert centroids and the
 * experts of every entry it kept, in slot order. Routing a query is the
 * router's own code on the host (pk_route_wanted), so the engine stops every
 * layer of a call between its QKV product and its attention, hands the
 * layer's query rows here, and gets back one bit mask per (row, head): bit e
 * for each expert the row is routed to, and bit 63 that every row has. Each
 * routed slot carries the same kind of mask, built once from the table by
 * pk_route_reads (the experts whose queries read it, and bit 63 for a sink or
 * window entry), so a row reads exactly the entries the CPU's routed
 * attention gathers. The GPU holds 63 experts' bits; a router with more is
 * refused.
 *
 * The routing statistics are the CPU's: entries read against entries
 * visible for every (row, layer, head), and on sampled positions the
 * attention mass full attention would put on the skipped entries, computed on
 * the host from the head's keys read back for those rows only. A round trip a
 * layer measures routing's quality on the GPU, not its speed. */
#ifndef PIKV_ENGINE_CUDA_ROUTING_CUDA_H
#define PIKV_ENGINE_CUDA_ROUTING_CUDA_H

#include "backend/cuda/engine.h"
#include "press/press.h"

typedef struct pk_cuda_routing pk_cuda_routing;

/* Route sequence seq's later calls through the table a press that routes
 * queries has just left of it. NULL (pk_fail) when the table does not fit
 * the sequence or routes over more than 63 experts. */
pk_cuda_routing *pk_cuda_routing_new(pk_cuda_session *s, const pikv_config *c, int seq, pk_press *press);

/* Stop routing and free. */
void pk_cuda_routing_free(pk_cuda_routing *r);

/* `steps` greedy steps of the routed sequence from `token`: each step is a
 * call of its own, since it stops at every layer for the host, and its token
 * is chosen on the host from the call's logits (logits: [vocab] of scratch).
 * The choices go to chosen[0..steps) when chosen is not NULL. */
int pk_cuda_routing_greedy(pk_cuda_routing *r, int32_t token, int steps, float *logits, int32_t *chosen);

/* What the routing has copied to the host: query rows, and keys and values of sampled rows. */
size_t pk_cuda_routing_bytes(const pk_cuda_routing *r);

#endif
