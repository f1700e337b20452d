# The front door. `make test` and `make run` do all set-up on a fresh Debian 12 machine.
PRESET ?= debug
CMAKE_FLAGS ?=
# ccache: paths relative to this folder, so clones elsewhere (CI) share one cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

.PHONY: all bootstrap build test lint run quickstart bench fuzz asan-test tsan-test format clean

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	cmake --preset $(PRESET) $(CMAKE_FLAGS)
	cmake --build --preset $(PRESET)

# Builds everything and runs every test (unit, compile-fail, packaging).
test: build
	ctest --preset $(PRESET)

# The format check and clang-tidy (.clang-tidy) over the sources, on the build's compile database.
lint: build
	scripts/lint build/$(PRESET)

# Builds and runs the main job: the shop on http://127.0.0.1:8080 (SQLite under ./var).
run: bootstrap
	cmake --preset release $(CMAKE_FLAGS)
	cmake --build --preset release --target shop
	@echo "cleave shop: open http://127.0.0.1:8080/ (Ctrl-C stops it)"
	./build/release/examples/shop/shop serve

# The in-process quickstart: commands and queries through both buses, printed.
quickstart: bootstrap
	cmake --preset release $(CMAKE_FLAGS)
	cmake --build --preset release --target cleave_quickstart
	./build/release/examples/quickstart/cleave_quickstart

# Builds and runs the benchmarks. The write and read benchmarks' PostgreSQL cases run on a
# throwaway cluster started here; the HTTP one runs wrk against the shop and against nginx.
# (CLEAVE_BENCH_READ_EVENTS=N sizes the read benchmark's log; default 1,000,000.)
# (BENCH_ARGS=--benchmark_format=json goes to the dispatch benchmark.)
bench:
	@scripts/bootstrap bench
	cmake --preset release $(CMAKE_FLAGS)
	cmake --build --preset release --target cleave_bench_dispatch cleave_bench_write cleave_bench_read cleave_bench_workflow cleave_bench_live shop
	./build/release/bench/cleave_bench_dispatch $(BENCH_ARGS)
	./build/release/bench/cleave_bench_workflow
	./build/release/bench/cleave_bench_live
	scripts/pg-cluster start build/release/bench-pg
	scripts/pg-cluster standby build/release/bench-pg-standby build/release/bench-pg
	url=$$(cat build/release/bench-pg/url); standby=$$(cat build/release/bench-pg-standby/url); \
	  CLEAVE_BENCH_PG_URL=$$url ./build/release/bench/cleave_bench_write && \
	  CLEAVE_BENCH_PG_URL=$$url CLEAVE_BENCH_PG_STANDBY_URL=$$standby ./build/release/bench/cleave_bench_read; \
	  status=$$?; scripts/pg-cluster stop build/release/bench-pg-standby; \
	  scripts/pg-cluster stop build/release/bench-pg; exit $$status
	scripts/bench-http build/release/examples/shop/shop

# Builds the libFuzzer targets with clang-16 and runs each for FUZZ_SECONDS (default 60).
FUZZ_SECONDS ?= 60
fuzz: bootstrap
	cmake --preset fuzz $(CMAKE_FLAGS)
	cmake --build --preset fuzz
	scripts/fuzz $(FUZZ_SECONDS)

asan-test: bootstrap
	cmake --preset asan $(CMAKE_FLAGS)
	cmake --build --preset asan
	ctest --preset asan

tsan-test: bootstrap
	cmake --preset tsan $(CMAKE_FLAGS)
	cmake --build --preset tsan
	ctest --preset tsan

format:
	clang-format-16 -i $$(git ls-files '*.cpp' '*.hpp' | grep -v '^tests/compile_fail/')

clean:
	rm -rf build
