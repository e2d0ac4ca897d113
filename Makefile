# ci-backend — `make run` starts a local backend, `make test` runs the suite.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -e 's/:.*## /\t/' -e "s/@DEPS@/$$(scripts/deps.sh --list)/" | expand -t 12

.PHONY: deps
deps: ## install what the backend and tests use, when missing (apt-get as root; scripts/deps.sh): @DEPS@
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

# The fast areas of the integration tests (modules of tests/tests.rs) that `make check` runs,
# each passed to the one test binary as the filter `<area>::`. Chosen by running every area
# alone once (`cargo test --test tests -- <area>::`, default test threads, debug build, as root
# from a clone under /root, on 2 cores shared with other builds; wall seconds including cargo):
#   fast, here:  harness 0.4, signatures 1.8, hostile_names 2.5, secrets 2.6, webhooks 2.7,
#                bad_input 3.9, cancel 4.2, history 6.0, durability 6.3, coalescing 6.5,
#                routing 7.4, pulls 7.9
#   slow (make test only): misbehaving 8.7, membership 9.3, follow 12.6, faults 14.2, fuzz 16.4,
#                regressions 18.0, http_abuse 20.4, integration 20.7, stickiness 20.9,
#                dashboard 22.2, membership_property 23.0, forge_status 29.8, failover 31.3,
#                scaling 54.6, run_local 63.3 (timed out: that run had SIGINT ignored, which the
#                test now resets; 3.6 s since, but it runs a whole `make run` on ports it found
#                free and released, which a parallel test can take: kept out)
# The rule: under 8 s alone, no failure in three runs of the twelve together under the other
# builds' load, and no program beyond redis-server, git, openssl and bash (dashboard needs
# chromium and xmllint, failover redis-sentinel; both have had CI-only failures).
# The twelve together (58 tests): 45, 57 and 53 s in three runs at a load average of 14-17
# (the sum alone is 52 s: the other builds took the cores the parallel tests would have used).
# `time make check` on a built tree (debug build and one clippy run done), load average 11-13:
# 49 s (fmt and clippy 5 s, unit tests 3 s, the areas 45 s). The missing programs are named, not
# installed (scripts/deps.sh --check; make deps installs them). An area renamed or removed in
# tests/tests.rs stops make check instead of silently filtering nothing.
FAST := harness signatures hostile_names secrets webhooks bad_input cancel history durability coalescing routing pulls

.PHONY: check
check: ## before a commit: fmt, clippy, unit tests and the FAST integration-test areas; < 2 min on a built tree
	@scripts/deps.sh --check redis-server:redis-server git:git openssl:openssl bash:bash /bin/kill:procps
	@for area in $(FAST); do grep -q "^mod $$area;" tests/tests.rs || { echo "check: FAST names $$area, which is no module of tests/tests.rs" >&2; exit 1; }; done
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --lib --bins
	$(CARGO) test --test tests -- $(addsuffix ::,$(FAST))

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
bench: ## benchmarks: ingest and push → result (bare, container, reused step; file:// and a git server over http) vs webhook/Buildbot/redis/by hand, throughput, control plane, charts; < 25 min
	@bench/run.sh

SOAK_SECONDS ?= 180
MEMBERSHIP_SCHEDULES ?= 20

.PHONY: soak
soak: deps ## chaos soak for SOAK_SECONDS (180), then MEMBERSHIP_SCHEDULES (20) membership schedules; fails on a lost build
	$(CARGO) build --release --bins
	$(CARGO) run --release --example soak -- --seconds $(SOAK_SECONDS)
	MEMBERSHIP_SCHEDULES=$(MEMBERSHIP_SCHEDULES) $(CARGO) test --release --test tests -- --ignored membership_holds_over_many --nocapture
