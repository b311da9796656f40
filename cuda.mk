# The CUDA backend (src/backend/cuda), built only by these targets: the plain
# build and `make test` never compile it.
#
#   make cuda        library, tests and benchmark with the CUDA engine, in build-cuda/
#   make bench-cuda  pikv-cuda-bench on the bundled model and random gpt2 / gpt2-medium shapes
#   make test-cuda   the kernels emulated on the host (no GPU needed), then the
#                    parity tests on the GPU (without one they print "skipped")
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
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_HDR   := $(wildcard src/backend/cuda/*.h src/backend/cuda/*.cuh)
CUDA_LDLIBS := $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a -L$(CUDA_HOME)/lib64 -lcublas -lcudart_static \
               $(BLAS_DIR)/libopenblas.a -Wl,-Bstatic -lgfortran -lquadmath -lutf8proc -Wl,-Bdynamic \
               -lcjson -lstdc++ -ldl -lrt -lpthread -lm -fopenmp

.PHONY: cuda cuda-programs test-cuda bench-cuda

cuda: deps
	$(MAKE) BUILD=$(CUDA_BUILD) OPT="-O3 -march=x86-64-v3" cuda-programs

cuda-programs: $(BUILD)/pikv-cuda-bench $(BUILD)/tests/cuda/test_cuda $(BUILD)/tests/cuda/test_kernels_host

$(BUILD)/src/backend/cuda/%.o: src/backend/cuda/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/libpikv_cuda.a: $(CUDA_OBJ)
	ar rcs $@ $^

$(BUILD)/pikv-cuda-bench: src/cli/cuda/pikv_cuda_bench.c $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LDLIBS)

$(BUILD)/tests/cuda/test_cuda: tests/cuda/test_cuda.c tests/check.h $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LDLIBS)

# The kernels compiled by the host C++ compiler against CUDA's headers.
$(BUILD)/tests/cuda/test_kernels_host: tests/cuda/test_kernels_host.cpp tests/cuda/emulation.h tests/check.h $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O1 -Wall -Wextra -Wno-unknown-pragmas -I$(CUDA_HOME)/include -Iinclude -Isrc -o $@ $< -lpthread

test-cuda: cuda
	$(CUDA_BUILD)/tests/cuda/test_kernels_host
	$(CUDA_BUILD)/tests/cuda/test_cuda

# Decode and prefill speed on the bundled model, then on random-weight
# checkpoints of gpt2 and gpt2-medium shape written by random_gpt2.py (needs
# python3 with torch and transformers; they are written once into
# CUDA_BENCH_DIR).
CUDA_BENCH_DIR ?= /tmp/pikv-cuda-bench
bench-cuda: cuda
	$(CUDA_BUILD)/pikv-cuda-bench models/pikv-ref-14m
	for shape in gpt2 gpt2-medium; do \
	  [ -f $(CUDA_BENCH_DIR)/$$shape/config.json ] || \
	    python3 src/backend/cuda/random_gpt2.py $(CUDA_BENCH_DIR)/$$shape $$shape || exit 1; \
	  $(CUDA_BUILD)/pikv-cuda-bench $(CUDA_BENCH_DIR)/$$shape || exit 1; \
	done
