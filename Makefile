# iot-ota-server: `make run` serves updates/, `make test` runs every test.
CARGO ?= cargo

.PHONY: build release release-dtls run test lint fmt clean bench bench-memory bench-coaps bench-dtls-build bench-instructions release-musl release-aarch64 dist

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# With coaps (DTLS 1.2 with pre-shared keys; needs Rust 1.89 or later).
release-dtls:
	$(CARGO) build --release --features dtls

run:
	$(CARGO) run --release --bin iot-ota-server -- -d updates -l '[::]:5683'

# The dtls feature's own tests run only with it: the module's unit tests,
# libcoap (tests/dtls.rs, with certificates tests/dtls_certs.rs) and tinydtls
# (tests/dtls_tinydtls.rs) as clients,
# the coaps downloads over the lossy link, the DTLS front's fuzzing, and two
# 30-second attacks (tests/dtls_attack.rs, one at a time); the rest ran
# already. So do the loadgen feature's: the load generator's unit tests and
# the bench harness's self-checks (tests/bench, which needs the feature).
test:
	$(CARGO) test --all-targets
	$(CARGO) test --features loadgen --bin iot-ota-client -- bench:: baseline::
	$(CARGO) test --features loadgen --test bench
	$(CARGO) test --features dtls --lib dtls
	$(CARGO) test --features dtls --test dtls
	$(CARGO) test --features dtls --test dtls_certs
	$(CARGO) test --features dtls --test lossy coaps
	$(CARGO) test --features dtls --test fuzz_dtls
	$(CARGO) test --features dtls --test no_alloc spoofed
	$(CARGO) test --features dtls --test dtls_tinydtls
	$(CARGO) test --features dtls --test dtls_attack -- --test-threads=1

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features dtls -- -D warnings
	$(CARGO) clippy --all-targets --features loadgen -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features dtls
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features loadgen

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
	rm -rf dist

# Static release binaries for routers, linked with the rust-lld that rustup
# ships (no C cross toolchain needed):
#   rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
release-musl:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld $(CARGO) build --release --target x86_64-unknown-linux-musl

release-aarch64:
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld $(CARGO) build --release --target aarch64-unknown-linux-musl
	if command -v qemu-aarch64 >/dev/null; then qemu-aarch64 $${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-musl/release/iot-ota-server --version; fi

# Static, stripped server and client for every gateway CPU in dist/, named
# by target (dist/iot-ota-server-mipsel-unknown-linux-musl), with
# dist/SHA256SUMS for `cd dist && sha256sum -c SHA256SUMS`. The
# toolchain (rustup targets, nightly and rust-src, zig, cargo-zigbuild) is
# installed by src/packaging/toolchain.sh on the first run. DIST_TARGETS builds
# a subset, e.g. `make dist DIST_TARGETS=mipsel-unknown-linux-musl`. Each
# target also gets the coaps build (--features dtls, pure Rust: no C
# toolchain either), named iot-ota-server-dtls-TARGET; DIST_DTLS=0 skips it.
#   x86_64, aarch64: stable, prebuilt std, rust-lld (as release-musl).
#   armv7 (hard-float, and soft-float for ARMv7 routers without an FPU),
#   armv6 (hard-float), mipsel and mips (24Kc, soft-float):
#     nightly, std built from source with the release profile, linked by
#     zig (cargo-zigbuild) against zig's musl. link-self-contained=no:
#     zig brings musl's start files and libc, which rustup ships only with
#     a prebuilt std; +crt-static: the MIPS targets link dynamically unless
#     told; -A linker-messages: zig's linker warns that the prebuilt std's
#     directory is missing, which is expected. No std features: without
#     the default `backtrace` (symbolization, useless in a stripped binary;
#     panic messages stay) a server is 170 to 300 KB smaller.
DIST_TARGETS ?= x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
	armv7-unknown-linux-musleabihf armv7-unknown-linux-musleabi \
	arm-unknown-linux-musleabihf mipsel-unknown-linux-musl mips-unknown-linux-musl
NIGHTLY ?= nightly
ZIGLANG_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/iot-ota-server/ziglang
DIST_RUSTFLAGS = -C link-self-contained=no -A linker-messages
DIST_FROM_SOURCE = $(CARGO) +$(NIGHTLY) zigbuild --locked --release \
	-Z build-std=std,panic_abort -Z build-std-features=
DIST_BINS = iot-ota-server iot-ota-client

dist:
	NIGHTLY=$(NIGHTLY) ZIGLANG_DIR=$(ZIGLANG_DIR) src/packaging/toolchain.sh $(DIST_TARGETS)
	rm -rf dist && mkdir dist
	set -e; td=$${CARGO_TARGET_DIR:-target}; \
	for t in $(DIST_TARGETS); do \
	  for variant in plain $(if $(filter 0,$(DIST_DTLS)),,dtls); do \
	    if [ $$variant = dtls ]; then \
	      extra="--features dtls --target-dir $$td/dtls"; out=$$td/dtls; suffix=-dtls; \
	    else extra=""; out=$$td; suffix=""; fi; \
	    case $$t in \
	      x86_64-*|aarch64-*) \
	        env CARGO_TARGET_$$(echo $$t | tr a-z- A-Z_)_LINKER=rust-lld \
	          $(CARGO) build --locked --release --target $$t $$extra ;; \
	      mips*) \
	        PYTHONPATH=$(ZIGLANG_DIR) RUSTFLAGS="$(DIST_RUSTFLAGS) -C target-feature=+crt-static" \
	          $(DIST_FROM_SOURCE) --target $$t $$extra ;; \
	      *) \
	        PYTHONPATH=$(ZIGLANG_DIR) RUSTFLAGS="$(DIST_RUSTFLAGS)" \
	          $(DIST_FROM_SOURCE) --target $$t $$extra ;; \
	    esac; \
	    for b in $(DIST_BINS); do \
	      cp $$out/$$t/release/$$b dist/$$b$$suffix-$$t; \
	    done; \
	  done; \
	done
	cd dist && sha256sum iot-ota-* > SHA256SUMS
	ls -l dist

# Throughput against a raw UDP baseline, flat cost, RSS, start-up,
# binary sizes and coaps against coap (tests/bench/main.rs); builds the
# static binaries first so their sizes are reported, and the dtls build
# for the coaps row. The client's load generator (`bench`, `baseline`) is
# the loadgen feature, which only these targets and `make test` enable:
# the packages' client has none. `cargo deb` rebuilds target/release's
# client without it.
bench: release-musl release-aarch64 bench-dtls-build
	$(CARGO) test --release --features loadgen --test bench -- --bench

# The coaps row alone: about a minute once built.
bench-coaps: bench-dtls-build
	$(CARGO) test --release --features loadgen --test bench -- --bench --only-coaps

# The coaps row's server and client, built with --features dtls into a
# target directory of their own (dtls/ under the usual one, where the bench
# looks for them), so that they do not replace the default binaries the
# other rows measure.
bench-dtls-build:
	$(CARGO) build --release --features dtls --target-dir $(or $(CARGO_TARGET_DIR),target)/dtls

# The server's own work per block, counted by callgrind (valgrind): the
# release server with its default options (rescans every second) serves a
# 256 KiB image to 16 devices downloading it by id, twice (2 and 4
# downloads each); the difference of the two totals over the 8,192 blocks
# between them is printed, start-up and the lookup cancelled out
# (tests/bench/instructions.py, raw UDP from python3: no client build).
# Twice: on a socket bound to 127.0.0.1, as make bench listens (recvfrom,
# sendto), and on 0.0.0.0, where replies name their source (recvmsg and
# sendmsg with packet info). Fails above BENCH_INSTRUCTIONS_MAX and
# BENCH_INSTRUCTIONS_MAX_WILDCARD, set about 10 % above what the code
# reaches (892 and 1,048 on 2026-12-07; issue 17's goal was 1,200): the
# count is steady to a few instructions, so a rise past it is a change to
# look at. About 10 s once built (CI runs it after make test).
BENCH_INSTRUCTIONS_MAX ?= 1000
BENCH_INSTRUCTIONS_MAX_WILDCARD ?= 1150

bench-instructions: release
	python3 tests/bench/instructions.py --server $(or $(CARGO_TARGET_DIR),target)/release/iot-ota-server \
	    --max $(BENCH_INSTRUCTIONS_MAX)
	python3 tests/bench/instructions.py --server $(or $(CARGO_TARGET_DIR),target)/release/iot-ota-server \
	    --max $(BENCH_INSTRUCTIONS_MAX_WILDCARD) --wildcard

# The memory rows of the benchmark alone (1,000 images of 64 KiB, static
# musl and host builds): about a minute once built.
bench-memory: release-musl
	$(CARGO) test --release --features loadgen --test bench -- --bench --only-memory

# Coverage-guided fuzzing (needs a nightly toolchain and `cargo install cargo-fuzz`).
# The fuzz crate lives in tests/fuzz, outside the product's dependency tree;
# dtls_front (the coaps front) is built with the dtls feature, the others without.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= wire_parse handler dtls_front

.PHONY: fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs: cargo install cargo-fuzz (and a nightly toolchain)"; exit 1; }
	@for t in $(FUZZ_TARGETS); do \
	  features=; [ $$t = dtls_front ] && features="--features dtls"; \
	  mkdir -p tests/fuzz/corpus/$$t && \
	  $(CARGO) +nightly fuzz run -s none -a --fuzz-dir tests/fuzz $$features $$t tests/fuzz/corpus/$$t tests/fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 || exit 1; \
	done
