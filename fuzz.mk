# Fuzzing the parsers and the inputs a user controls, included from the Makefile.
#
#   make fuzz                       build every target, run each for FUZZ_SECONDS
#   make fuzz FUZZ_SECONDS=600 FUZZ_TARGETS=fuzz_eplb
#   make fuzz-build                 only build them
#
# One libFuzzer target per parser lives in fuzz/. The library is compiled again
# with clang, coverage instrumentation, AddressSanitizer and UBSan into
# build-fuzz/ (never build/). Each run starts from the seed corpus in
# fuzz/corpus/<target>/ (read-only) and keeps what it discovers in
# build-fuzz/corpus/<target>/; any crash, leak, sanitizer report, broken
# invariant or hang stops `make fuzz` with the log's tail and the input saved
# under build-fuzz/artifacts/.

# Included anywhere in the Makefile, this file leaves its default goal alone.
FUZZ_SAVED_GOAL := $(.DEFAULT_GOAL)

FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 60
# Seconds one input may take before it counts as a hang.
FUZZ_TIMEOUT ?= 30
FUZZ_TARGETS ?= fuzz_safetensors fuzz_config fuzz_tokenizer_files fuzz_tokenize fuzz_press_spec fuzz_eplb \
                fuzz_duo_pattern

FUZZ_MULTIARCH := $(shell $(FUZZ_CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
FUZZ_BLAS_DIR  := /usr/lib/$(FUZZ_MULTIARCH)/openblas-openmp
FUZZ_SANITIZE  := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS    := -g -O1 -fno-omit-frame-pointer $(FUZZ_SANITIZE) -std=c11 -D_GNU_SOURCE -Wall -Wextra \
                  -Wshadow -fopenmp -Iinclude -Isrc -I/usr/include/$(FUZZ_MULTIARCH)/openblas-openmp \
                  $(shell pkg-config --cflags cjson 2>/dev/null)
FUZZ_LDLIBS    := -L$(FUZZ_BLAS_DIR) -Wl,-rpath,$(FUZZ_BLAS_DIR) -lopenblas -lutf8proc -lcjson -lm -fopenmp

# The library's sources as the Makefile lists them (without the CUDA backend).
FUZZ_LIB_SRC := $(LIB_SRC)
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)

.PHONY: fuzz fuzz-build

fuzz-build: $(FUZZ_BINS)

$(FUZZ_BUILD)/libpikv.a: $(FUZZ_LIB_OBJ)
	ar rcs $@ $^

$(FUZZ_BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(FUZZ_BUILD)/libpikv.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_BUILD)/libpikv.a $(FUZZ_LDLIBS)

-include $(FUZZ_LIB_OBJ:.o=.d)

# Run the targets one after another; print libFuzzer's closing line ("Done N
# runs in S second(s)") for each, or the end of the log of the one that failed.
fuzz: $(FUZZ_BINS)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts; \
	  log=$(FUZZ_BUILD)/$$t.log; \
	  if $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) -print_final_stats=1 \
	       -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t >$$log 2>&1; then \
	    echo "$$t: $$(grep -E '^Done [0-9]+ runs' $$log | tail -n 1)"; \
	  else \
	    tail -n 60 $$log; echo "$$t: FAILED (log: $$log, inputs: $(FUZZ_BUILD)/artifacts/)"; exit 1; \
	  fi; \
	done

.DEFAULT_GOAL := $(FUZZ_SAVED_GOAL)
