# pikv — build, run and test.
#
#   make run    install missing Debian packages (as root), build, run the main job
#   make test   build and run the test suite
#   make test-asan   the same suite built with AddressSanitizer + UBSan
#   make bench  pikv bench on the bundled model
#   make cuda   the CUDA backend, its tests and benchmark (cuda.mk)

CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  += $(OPT) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -fopenmp -Iinclude -Isrc \
           $(shell pkg-config --cflags cjson 2>/dev/null)
# OpenBLAS's OpenMP build, named explicitly: it runs single-threaded when called
# inside our own OpenMP regions instead of oversubscribing the cores.
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
BLAS_DIR  := /usr/lib/$(MULTIARCH)/openblas-openmp
CFLAGS  += -I/usr/include/$(MULTIARCH)/openblas-openmp
LDLIBS  += $(SANITIZE) -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -lutf8proc -lcjson -lm -fopenmp

BUILD   ?= build
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all
DEB_PACKAGES := build-essential pkg-config libopenblas-openmp-dev libutf8proc-dev libcjson-dev

LIB_SRC  := $(shell find src -name '*.c' -not -path 'src/cli/*' -not -path 'src/backend/cuda/*' | sort)
CLI_SRC  := $(shell find src/cli -name '*.c' -not -path 'src/cli/cuda/*' | sort)
TEST_SRC := $(wildcard tests/test_*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test test-asan test-valgrind bench clean

all: $(BUILD)/pikv $(TESTS)

# Install what a fresh Debian 12 machine lacks. As root this runs apt-get; otherwise
# it prints the command to run and stops.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(BUILD)/libpikv.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/pikv: $(CLI_OBJ) $(BUILD)/libpikv.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/libpikv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libpikv.a $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FILE_CFLAGS) -MMD -MP -c -o $@ $<

# The element-wise kernels need -ffast-math for GCC to vectorise expf and tanhf
# through glibc's libmvec; the flag stays confined to that one file.
$(BUILD)/src/model/ops.o: FILE_CFLAGS = -ffast-math

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

run: deps
	$(MAKE) $(BUILD)/pikv
	$(BUILD)/pikv compare

test: deps
	$(MAKE) all
	PIKV=$(BUILD)/pikv TEST_BIN=$(BUILD)/tests sh tests/run.sh

# The same suite built with AddressSanitizer and UndefinedBehaviorSanitizer, in
# its own build directory; any report aborts the test that triggered it.
# PIKV_TEST_QUICK shrinks the accuracy sweeps, which test quality, not memory.
test-asan: deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer $(ASAN_FLAGS)" SANITIZE="$(ASAN_FLAGS)" all
	PIKV_TEST_QUICK=1 ASAN_OPTIONS=detect_leaks=1 PIKV=build-asan/pikv TEST_BIN=build-asan/tests sh tests/run.sh

# The CLI under valgrind's memcheck (no leaks, no invalid accesses), built
# without AVX-512, which valgrind cannot decode.
test-valgrind: deps
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq valgrind; }
	$(MAKE) BUILD=build-valgrind OPT="-O2 -g -march=x86-64-v3" build-valgrind/pikv
	PIKV=build-valgrind/pikv sh tests/valgrind.sh

bench: deps
	$(MAKE) $(BUILD)/pikv
	$(BUILD)/pikv bench -p 1024 -n 128 -r 5

clean:
	rm -rf build build-asan build-valgrind build-fuzz build-cuda

# Fuzzing with libFuzzer (clang): make fuzz [FUZZ_SECONDS=60]
include fuzz.mk
include cuda.mk
