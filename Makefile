# hubwarden. `make ci` is what CI runs (as root): set-up, unit, integration and
# e2e tiers. `make test` needs no root.
GO      ?= go
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/hubwarden

# golangci-lint is built from tools/go.mod (its own module; kind's
# hack/tools/go.mod pattern) into bin/, named by its pinned version so that a
# present binary is reused and a new pin builds a new one.
GOLANGCI_LINT_VERSION = $(shell awk '{for (i = 1; i < NF; i++) if ($$i == "github.com/golangci/golangci-lint/v2") print $$(i+1)}' tools/go.mod)
GOLANGCI_LINT         = $(CURDIR)/bin/golangci-lint-$(GOLANGCI_LINT_VERSION)
# The modules golangci-lint checks: the main one and the e2e ones.
LINT_MODULES          := . e2e e2e/deploytest

.PHONY: all build setup test integration e2e-netns e2e-kind ci demo bench lint tools fuzz clean deploy-check bench-smoke bench-guard notebook-test notebook-proof notebook-ci

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -mod=readonly -o $(BIN) ./sidecar

setup:
	./scripts/setup.sh

# Unit tests: pure, no root needed (root-only tests skip themselves).
test:
	$(GO) test -race -count=1 $(PKGS)

# Root-only integration tests, each in its own fresh network namespaces.
integration:
	$(GO) test -race -count=1 -p 1 -run 'Integration' $(PKGS)

# golangci-lint (.golangci.yml: govet, staticcheck, errorlint, revive, misspell,
# depguard; goimports) over every module, plus gofmt over every tracked file
# (also those behind build tags golangci-lint does not load) and go vet.
lint: tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)
	@set -e; for m in $(LINT_MODULES); do echo "golangci-lint: $$m"; (cd $$m && $(GOLANGCI_LINT) run ./...); done

tools: $(GOLANGCI_LINT)

$(GOLANGCI_LINT):
	@test -n "$(GOLANGCI_LINT_VERSION)" || { echo "no golangci-lint pin in tools/go.mod" >&2; exit 1; }
	cd tools && $(GO) build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

# Fuzz seeds run with `make test`; this fuzzes each target briefly.
fuzz:
	./scripts/fuzz.sh 20s

# Images and z2jh values, checked without a Docker engine.
# The render test (KubeSpawner 7.0.0 on the chart's own hub config) needs the
# hub environment of scripts/python-env.sh: here it fails without it.
deploy-check:
	./images/build-check.sh
	cd e2e/deploytest && $(GO) vet ./... && HUBWARDEN_REQUIRE_VENV=1 $(GO) test -count=1 ./...

# The notebook side (notebook/): the extension's pytest suite against
# jupyter-server 2.19.0, and the lockdown proof suite (root: JupyterHub 5.5.0
# in its own network namespace, unprivileged users, Chromium). notebook-proof
# tries every attempt and checks JupyterLab in the browser after each (about
# ten minutes); notebook-ci runs pytest and the proof's CI subset at once
# (about five).
notebook-test:
	./scripts/notebook-test.sh -q

notebook-proof:
	./scripts/notebook-proof.sh --browser all

notebook-ci:
	./scripts/notebook-ci.sh

# The proof on real JupyterHub parts in network namespaces (root).
e2e-netns:
	cd e2e && $(GO) vet -tags e2e ./... && HWE2E_STRICT=1 $(GO) test -tags e2e -count=1 -p 1 -timeout 40m -v -run '^TestE2E' ./netns/

# The real-cluster check (needs Docker, kind, helm, kubectl): not runnable here.
e2e-kind:
	./e2e/kind/run.sh

demo:
	./e2e/demo.sh

# Writes BENCHMARKS.md (root, about 8 minutes); the smoke run only checks that
# every row is produced.
bench:
	./scripts/bench.sh

bench-smoke:
	BENCH_QUICK=1 ./scripts/bench.sh

# The HTTP guard's cost, with and without it side by side through the real
# proxy (root, about 3 minutes; BENCH_QUICK=1 about 1 minute). BENCH_OUT
# names a file for the table.
bench-guard:
	$(GO) test -tags bench -count=1 -timeout 20m -run '^TestBenchGuard$$' -v ./guard/

ci: setup lint deploy-check
	$(GO) test -count=1 -p 1 $(PKGS)
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x $(PKGS)
	cd e2e && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(MAKE) notebook-ci
	$(MAKE) e2e-netns
	$(MAKE) bench-smoke

clean:
	rm -rf bin
