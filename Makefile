# The project's commands; Taskfile.yml offers the same targets.
#
#   make check   what a person runs before pushing and what CI runs
#                (.ci/run): setup, gofmt, go vet, staticcheck, go mod tidy,
#                the tests (with the import-rule test in tools/layering),
#                the ARM tests under qemu, the cross builds, their
#                reproducibility and the agent's size budget. It runs every
#                step, prints how long each took, and fails if any failed.
#   make test    setup, go test ./..., and the ARM tests under qemu
#   make build   the four binaries into bin/
#   make cross   the device agents into dist/ (cross/build.sh)
#   make size    cross, then fail if the linux/arm64 agent is over 12 MB
#   make smoke   cross, then run each agent artefact on its (emulated) CPU
#   make repro   cross, then check the build is reproducible
#   make image   cross, then a rootfs overlay tarball per target into dist/
#   make demo    the walkthrough: a fleet, a user and a device agent
#   make bench   the benchmarks (tools/bench/run.sh)
#   make screenshots  the browser tests that take the README's screenshots:
#                the dashboard's (docs/screenshots) and web apps' (docs/images)
#   make fuzz    every fuzz target for FUZZTIME each (default 10s)
#   make clean   remove bin/ and dist/
#
# Variables: VERSION and COMMIT (embedded into binaries; default from git),
# TEST_TIMEOUT (go test -timeout per test binary, default 30m: the e2e package takes ~20 on a busy 2-core machine; a hung test
# costs at most that), GOTESTFLAGS (extra go test
# flags, e.g. GOTESTFLAGS=-race), FUZZTIME.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= go
TOOLS := $(CURDIR)/.cache/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo dev)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export VERSION COMMIT SOURCE_DATE_EPOCH
TEST_TIMEOUT ?= 30m
GOTESTFLAGS ?=
FUZZTIME ?= 10s

BUILDINFO := remoteler.dev/edge/internal/buildinfo
LDFLAGS := -X $(BUILDINFO).Version=$(VERSION) -X $(BUILDINFO).Commit=$(COMMIT)
BINARIES := ./firmware/cmd/edge-agent ./fleet/cmd/fleetd ./fleet/cmd/tsh ./fleet/cmd/fleetctl
TARGETS := linux-arm64 linux-armv6 linux-armv7 linux-amd64 linux-riscv64

# The steps of `make check`, cheapest first.
# smoke, repro and size check the artefacts the cross step built
# (smoke-dist, repro-dist, size-dist), rather than building them again.
CHECK_STEPS := setup fmt vet staticcheck tidy test-go layering test-arm cross smoke-dist repro-dist size-dist

.PHONY: all setup build test check cross size image demo bench fuzz clean screenshots \
	fmt vet staticcheck tidy test-go test-arm smoke smoke-dist repro repro-dist size-dist layering

all: build

setup:
	@bash tools/setup/setup.sh

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(BINARIES)

test: test-go test-arm

check:
	@failed=(); summary=(); total=$$SECONDS; \
	for step in $(CHECK_STEPS); do \
		echo "=== check: $$step"; start=$$SECONDS; \
		if $(MAKE) --no-print-directory $$step; then result=ok; else result=FAILED; failed+=("$$step"); fi; \
		summary+=("$$(printf '%-12s %-6s %5ds' "$$step" "$$result" $$((SECONDS - start)))"); \
	done; \
	echo "=== check: summary (total $$((SECONDS - total))s)"; printf '    %s\n' "$${summary[@]}"; \
	if (( $${#failed[@]} )); then echo "check: FAILED: $${failed[*]}"; exit 1; fi; \
	echo "check: all $(words $(CHECK_STEPS)) steps ok"

fmt:
	@out=$$(find . -path ./.git -prune -o -path ./.cache -prune -o -path ./dist -prune -o -path ./bin -prune \
		-o -name testdata -prune -o -name '*.go' -print | xargs gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt: these files need gofmt -w:"; echo "$$out"; exit 1; fi; \
	echo "gofmt: clean"

vet:
	$(GO) vet ./...

staticcheck: setup
	$(TOOLS)/staticcheck ./...

tidy:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@echo "go mod tidy: clean"

# go test through gotestsum: failures are shown with their output, and a
# skipped test fails the step (CI has everything the tests need, so a skip
# would hide a test that did not run).
test-go: setup
	@mkdir -p .cache
	$(TOOLS)/gotestsum --format pkgname-and-test-fails --jsonfile .cache/test-go.json -- \
		-timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./...
	@bash tools/setup/noskip.sh .cache/test-go.json

test-arm:
	bash cross/qemu-test.sh

# The import-rule test on its own, verbose, so the agent's module list shows
# in the log (go test ./... runs it too, quietly).
layering:
	$(GO) test -count=1 -v -run . ./tools/layering

cross:
	bash cross/build.sh $(TARGETS)

# Each artefact runs `edge-agent version` on its own (emulated) CPU.
smoke: cross
	@$(MAKE) --no-print-directory smoke-dist

smoke-dist:
	bash cross/smoke.sh

repro: cross
	@$(MAKE) --no-print-directory repro-dist

repro-dist:
	bash cross/repro.sh linux-arm64

size: cross
	@$(MAKE) --no-print-directory size-dist

size-dist:
	bash cross/size.sh

image: cross
	@for t in $(TARGETS); do bash images/device/rootfs.sh dist/edge-agent-$$t dist/edge-agent-rootfs-$$t.tar.gz; done
	@cd dist && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS
	@echo "image: wrote dist/SHA256SUMS"

demo:
	bash tools/demo.sh

bench:
	@if [ -f tools/bench/run.sh ]; then bash tools/bench/run.sh; else echo "bench: tools/bench/run.sh not written yet"; fi

# The browser tests that take the README's screenshots, with SCREENSHOTS
# naming where to put them.
screenshots: setup
	SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test -count=1 -run '^TestDashboardScreenshots$$' ./tools/e2e
	SCREENSHOTS=$(CURDIR)/docs/images $(GO) test -count=1 -run 'TestAppsInTheBrowser$$' ./tools/e2e
	@ls -l docs/screenshots/*.png docs/images/*.png

# Each fuzz target found by go test -list, one at a time; runs them all and
# then fails if any failed (or if listing them failed).
fuzz:
	@list=$$($(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ { names[n++] = $$1; next } /^ok/ { for (i = 0; i < n; i++) print $$2, names[i]; n = 0 }'); \
	failed=(); count=0; \
	while read -r pkg name; do \
		[ -n "$$pkg" ] || continue; count=$$((count + 1)); \
		echo "=== fuzz: $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" || failed+=("$$pkg.$$name"); \
	done <<<"$$list"; \
	if (( $${#failed[@]} )); then echo "fuzz: FAILED: $${failed[*]} (reproducers are in each package's testdata/fuzz)"; exit 1; fi; \
	echo "fuzz: $$count targets ran $(FUZZTIME) each without a failure"

clean:
	rm -rf bin dist
