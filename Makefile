# hubwarden. `make ci` is what CI runs (as root): set-up, unit, integration and
# e2e tiers. `make test` needs no root.
GO      ?= go
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/hubwarden

.PHONY: all build setup test integration e2e-netns e2e-kind ci demo bench lint fuzz clean deploy-check bench-smoke

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

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

# Fuzz seeds run with `make test`; this fuzzes each target briefly.
fuzz:
	./scripts/fuzz.sh 20s

# Images and z2jh values, checked without a Docker engine.
deploy-check:
	./images/build-check.sh
	cd e2e/deploytest && $(GO) vet ./... && $(GO) test -count=1 ./...

# The proof on real JupyterHub parts in network namespaces (root).
e2e-netns:
	cd e2e && $(GO) vet -tags e2e ./... && HWE2E_STRICT=1 $(GO) test -tags e2e -count=1 -p 1 -timeout 25m -v -run '^TestE2E' ./netns/

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

ci: setup lint deploy-check
	$(GO) test -count=1 -p 1 $(PKGS)
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x $(PKGS)
	cd e2e && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(MAKE) e2e-netns
	$(MAKE) bench-smoke

clean:
	rm -rf bin
