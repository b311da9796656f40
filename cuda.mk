# The CUDA backend (src/backend/cuda), built only by these targets: the plain
# build and `make test` never compile it.
#
#   make cuda        build-cuda/pikv (generate and bench take --device cuda), the
#                    CUDA tests and the library with the CUDA engine
#   make bench-cuda  pikv bench --device cuda on the bundled model and on random
#                    gpt2 / gpt2-medium shapes
#   make test-cuda   the kernels emulated on the host, and the host logic of the
#                    GPU group, a decoding press and query-time routing against
#                    stand-in engines (no GPU needed), then the
#                    parity, group and CLI tests on the GPU (without one they
#                    print "skipped")
#
# Host code is built for x86-64-v3 rather than -march=native, and OpenBLAS,
# libgfortran and utf8proc are linked statically, so that the programs run on a
# GPU machine that has none of the Debian packages installed (libcjson and
# libgomp stay shared: copy them alongside).

NVCC       ?= nvcc
CUDA_BUILD ?= build-cuda
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
# Hopper machine code plus PTX that newer GPUs compile at load.
CUDA_ARCH  ?= -gencode arch=compute_90,code=[sm_90,compute_90]
NVCCFLAGS  ?= -O3 -std=c++17 $(CUDA_ARCH) -Iinclude -Isrc -Xcompiler -Wall,-Wextra

CUDA_SRC   := $(sort $(wildcard src/backend/cuda/*.cu))
# The engine's GPU paths (presses on the CUDA engine), plain C.
CUDA_C_SRC := $(sort $(wildcard src/engine/cuda/*.c))
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/%.o) $(CUDA_C_SRC:%.c=$(BUILD)/%.o)
CUDA_HDR   := $(wildcard src/backend/cuda/*.h src/backend/cuda/*.cuh src/engine/cuda/*.h)
CUDA_LDLIBS := $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a -L$(CUDA_HOME)/lib64 -lcublas -lcudart_static \
               $(BLAS_DIR)/libopenblas.a -Wl,-Bstatic -lgfortran -lquadmath -lutf8proc -Wl,-Bdynamic \
               -lcjson -lstdc++ -ldl -lrt -lpthread -lm -fopenmp

.PHONY: cuda cuda-programs test-cuda bench-cuda

cuda: deps
	$(MAKE) BUILD=$(CUDA_BUILD) OPT="-O3 -march=x86-64-v3" CUDA_CLI=1 cuda-programs

cuda-programs: $(BUILD)/pikv $(BUILD)/tests/cuda/test_cuda $(BUILD)/tests/cuda/test_cuda_press \
               $(BUILD)/tests/cuda/test_cuda_session $(BUILD)/tests/cuda/test_cuda_group \
               $(BUILD)/tests/cuda/test_kernels_host $(BUILD)/tests/cuda/test_group_host \
               $(BUILD)/tests/cuda/test_decoding_host $(BUILD)/tests/cuda/test_routing_host

# In the CUDA build the command gains its GPU paths (src/cli/cuda) and links
# the CUDA engine.
ifdef CUDA_CLI
CUDA_CLI_OBJ := $(BUILD)/src/cli/cuda/device_cuda.o
$(CLI_OBJ) $(CUDA_CLI_OBJ): CFLAGS += -DPIKV_CUDA
$(CUDA_CLI_OBJ): CFLAGS += -I$(BUILD)
$(BUILD)/pikv: $(CUDA_CLI_OBJ) $(BUILD)/libpikv_cuda.a
$(BUILD)/pikv: LDLIBS = $(CUDA_LDLIBS)
endif

$(BUILD)/src/backend/cuda/%.o: src/backend/cuda/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/libpikv_cuda.a: $(CUDA_OBJ)
	ar rcs $@ $^

# The engine's GPU paths are built by the plain C rule, which writes their header dependencies.
-include $(CUDA_C_SRC:%.c=$(BUILD)/%.d)

$(BUILD)/tests/cuda/test_cuda $(BUILD)/tests/cuda/test_cuda_press $(BUILD)/tests/cuda/test_cuda_session \
$(BUILD)/tests/cuda/test_cuda_group: $(BUILD)/tests/cuda/%: tests/cuda/%.c tests/check.h tests/cuda/tokens.h $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LDLIBS)

# The kernels compiled by the host C++ compiler against CUDA's headers.
# It links the library for router/kmeans.c, what the device's k-means must equal.
$(BUILD)/tests/cuda/test_kernels_host: tests/cuda/test_kernels_host.cpp tests/cuda/emulation.h tests/check.h $(CUDA_HDR) \
                                       $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O1 -ffp-contract=off -Wall -Wextra -Wno-unknown-pragmas -I$(CUDA_HOME)/include -Iinclude -Isrc \
	    -o $@ $< $(BUILD)/libpikv.a -lpthread -lm

# The GPU group's host logic against a stand-in engine: plain C, no GPU.
$(BUILD)/tests/cuda/test_group_host: tests/cuda/test_group_host.c src/engine/cuda/group_cuda.c tests/check.h \
                                     $(CUDA_HDR) $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ tests/cuda/test_group_host.c src/engine/cuda/group_cuda.c $(BUILD)/libpikv.a $(LDLIBS) -lpthread

# A decoding press's glue (engine/cuda/decoding_cuda.c) against a stand-in engine: plain C, no GPU.
$(BUILD)/tests/cuda/test_decoding_host: tests/cuda/test_decoding_host.c src/engine/cuda/decoding_cuda.c tests/check.h \
                                        $(CUDA_HDR) $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ tests/cuda/test_decoding_host.c src/engine/cuda/decoding_cuda.c $(BUILD)/libpikv.a $(LDLIBS)

# Query-time routing's glue (engine/cuda/routing_cuda.c) against a stand-in engine: plain C, no GPU.
$(BUILD)/tests/cuda/test_routing_host: tests/cuda/test_routing_host.c src/engine/cuda/routing_cuda.c tests/check.h \
                                       tests/cuda/tokens.h $(CUDA_HDR) $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ tests/cuda/test_routing_host.c src/engine/cuda/routing_cuda.c $(BUILD)/libpikv.a $(LDLIBS)

test-cuda: cuda
	$(CUDA_BUILD)/tests/cuda/test_kernels_host
	$(CUDA_BUILD)/tests/cuda/test_group_host
	$(CUDA_BUILD)/tests/cuda/test_decoding_host
	$(CUDA_BUILD)/tests/cuda/test_routing_host
	$(CUDA_BUILD)/tests/cuda/test_cuda
	$(CUDA_BUILD)/tests/cuda/test_cuda_press
	$(CUDA_BUILD)/tests/cuda/test_cuda_session
	$(CUDA_BUILD)/tests/cuda/test_cuda_group
	PIKV=$(CUDA_BUILD)/pikv sh tests/cuda/cli_cuda.sh

# Decode and prefill speed on the bundled model (1,000-token prompt), then on
# random-weight checkpoints of gpt2 and gpt2-medium shape (888 tokens, so that
# 128 more fit in their 1,024 positions) written by random_gpt2.py (needs
# python3 with torch and transformers; they are written once into
# CUDA_BENCH_DIR).
CUDA_BENCH_DIR ?= /tmp/pikv-cuda-bench
bench-cuda: cuda
	$(CUDA_BUILD)/pikv bench --device cuda -p 1000 -n 128
	for shape in gpt2 gpt2-medium; do \
	  [ -f $(CUDA_BENCH_DIR)/$$shape/config.json ] || \
	    python3 src/backend/cuda/random_gpt2.py $(CUDA_BENCH_DIR)/$$shape $$shape || exit 1; \
	  $(CUDA_BUILD)/pikv bench --device cuda -m $(CUDA_BENCH_DIR)/$$shape -p 888 -n 128 || exit 1; \
	done
