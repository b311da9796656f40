# The CUDA backend (src/backend/cuda), built only by these targets: the plain
# build and `make test` never compile it.
#
#   make cuda        library, tests and benchmark with the CUDA engine, in build-cuda/
#   make test-cuda   the CUDA parity tests (needs a GPU; without one they say "skipped")
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

.PHONY: cuda cuda-programs test-cuda

cuda: deps
	$(MAKE) BUILD=$(CUDA_BUILD) OPT="-O3 -march=x86-64-v3" cuda-programs

cuda-programs: $(BUILD)/pikv-cuda-bench $(BUILD)/tests/cuda/test_cuda

$(BUILD)/src/backend/cuda/%.o: src/backend/cuda/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/libpikv_cuda.a: $(CUDA_OBJ)
	ar rcs $@ $^

$(BUILD)/pikv-cuda-bench: src/backend/cuda/bench.c $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LDLIBS)

$(BUILD)/tests/cuda/test_cuda: tests/cuda/test_cuda.c tests/check.h $(BUILD)/libpikv_cuda.a $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(CUDA_LDLIBS)

test-cuda: cuda
	$(CUDA_BUILD)/tests/cuda/test_cuda
