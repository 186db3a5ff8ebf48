# iot-ota-server: `make run` serves updates/, `make test` runs every test.
CARGO ?= cargo

.PHONY: build release release-dtls run test lint fmt clean bench bench-memory release-musl release-aarch64

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# With coaps (DTLS 1.2 with pre-shared keys; needs Rust 1.89 or later).
release-dtls:
	$(CARGO) build --release --features dtls

run:
	$(CARGO) run --release --bin iot-ota-server -- -d updates -l '[::]:5683'

# The dtls feature's own tests (tests/dtls.rs, the coaps downloads over the
# lossy link, the DTLS front's fuzzing, and the module's unit tests) run only with it; the rest ran
# already.
test:
	$(CARGO) test --all-targets
	$(CARGO) test --features dtls --lib dtls
	$(CARGO) test --features dtls --test dtls
	$(CARGO) test --features dtls --test lossy coaps
	$(CARGO) test --features dtls --test fuzz_dtls

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features dtls -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features dtls

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean

# Static release binaries for routers, linked with the rust-lld that rustup
# ships (no C cross toolchain needed):
#   rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
release-musl:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld $(CARGO) build --release --target x86_64-unknown-linux-musl

release-aarch64:
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld $(CARGO) build --release --target aarch64-unknown-linux-musl
	if command -v qemu-aarch64 >/dev/null; then qemu-aarch64 $${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-musl/release/iot-ota-server --version; fi

# Throughput against a raw UDP baseline, flat cost, RSS, start-up and
# binary sizes (tests/bench/main.rs); builds the static binaries first so
# their sizes are reported.
bench: release-musl release-aarch64
	$(CARGO) test --release --test bench -- --bench

# The memory rows of the benchmark alone (1,000 images of 64 KiB, static
# musl and host builds): about a minute once built.
bench-memory: release-musl
	$(CARGO) test --release --test bench -- --bench --only-memory

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
