# ci-backend — `make run` starts a local backend, `make test` runs the suite.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

.PHONY: deps
deps: ## install redis-server, git, openssl, curl when missing (apt-get as root)
	@scripts/deps.sh

.PHONY: build
build: deps ## release binaries in target/release
	$(CARGO) build --release --bins

.PHONY: run
run: build ## Redis + hook on :5000 + three slaves; prints the token and a curl line
	@scripts/run-local.sh

.PHONY: test
test: deps ## the whole suite: unit tests, the real-binaries integration tests, the deployment definitions (Marathon, Kubernetes)
	$(CARGO) test --all-targets
	python3 images/validate.py --self-test
	images/kubernetes/validate.sh --self-test

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

.PHONY: images
images: ## build the hook, slave and redis images (base image built locally when it cannot be pulled)
	@scripts/deps.sh debootstrap:debootstrap
	@images/build-images.sh
	@python3 images/validate.py --self-test
	@images/kubernetes/validate.sh --self-test

.PHONY: e2e
e2e: ## the deployment tests on a real Docker engine (needs `make images`)
	@scripts/deps.sh jq:jq ss:iproute2
	@images/e2e.sh

.PHONY: bench
bench: ## benchmarks of issues 6 and 13 (ingest and latency vs webhook/Buildbot/redis, throughput, control plane, charts); < 20 min
	@bench/run.sh

SOAK_SECONDS ?= 180
MEMBERSHIP_SCHEDULES ?= 20

.PHONY: soak
soak: deps ## chaos soak for SOAK_SECONDS (180), then MEMBERSHIP_SCHEDULES (20) membership schedules; fails on a lost build
	$(CARGO) build --release --bins
	$(CARGO) run --release --example soak -- --seconds $(SOAK_SECONDS)
	MEMBERSHIP_SCHEDULES=$(MEMBERSHIP_SCHEDULES) $(CARGO) test --release --test tests -- --ignored membership_holds_over_many --nocapture
