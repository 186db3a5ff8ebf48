# iot-ota-server: `make run` serves updates/, `make test` runs every test.
CARGO ?= cargo

.PHONY: build release run test lint fmt clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

run:
	$(CARGO) run --release --bin iot-ota-server -- -d updates -l '[::]:5683'

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
