# realipd — run `make help` for the targets.

GO       ?= go
BIN      ?= bin/realipd
PREFIX   ?= /usr/local
# What the binary says about itself (realipd version): packaging/buildinfo.sh
# takes them from git; each can be given instead.
VERSION    ?= $(shell packaging/buildinfo.sh version)
REVISION   ?= $(shell packaging/buildinfo.sh revision)
BUILD_DATE ?= $(shell packaging/buildinfo.sh date)
LDFLAGS    := -X main.version=$(VERSION) -X main.revision=$(REVISION) -X main.buildDate=$(BUILD_DATE)
# make image: the image's name and the stable tag the examples use (it is
# also tagged VERSION); CONTAINER_TOOL=docker|podman|buildah to choose.
IMAGE    ?= localhost/realipd
TAG      ?= dev
CONFIG   ?=
FUZZTIME ?= 10s
BENCH    ?= .

.DEFAULT_GOAL := help
.PHONY: help build install image image-iptables release test race bench bench-proxies fuzz lint fmt proto proto-check run ci clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: CONFIG=file (run), FUZZTIME=$(FUZZTIME) (fuzz), BENCH=regexp (bench),"
	@echo "  VERSION=$(VERSION) (build, image, release), IMAGE=$(IMAGE) TAG=$(TAG) (image)"

build: ## Build bin/realipd, with its version, commit and date
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/realipd

install: ## Copy bin/realipd to PREFIX/bin (/usr/local/bin), where sudo finds it: make build && sudo make install
	@test -x $(BIN) || { echo "$(BIN) is missing: run make build first (as yourself: sudo may not find go)" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/realipd

export VERSION REVISION BUILD_DATE IMAGE TAG

image: ## Build the container image IMAGE:TAG (and IMAGE:VERSION) with docker, podman or buildah
	GO=$(GO) TARGET=realipd packaging/image.sh

image-iptables: ## Build IMAGE-iptables:TAG, for the init container (pulls debian:trixie-slim)
	GO=$(GO) TARGET=realipd-iptables packaging/image.sh

release: ## Build static linux/amd64 and linux/arm64 archives and SHA256SUMS in dist/
	GO=$(GO) packaging/release.sh

test: ## Run every test (the README's test command)
	$(GO) test ./...

race: ## Run every test with the race detector (needs cgo and a C compiler)
	$(GO) test -race ./...

bench: ## Run the benchmarks (BENCH=regexp to pick some), with allocations
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem ./...

bench-proxies: ## As root: the native listener beside HAProxy and nginx (bench/proxies.sh; docs/performance.md)
	bash bench/proxies.sh

fuzz: ## Run each Fuzz target for FUZZTIME (default 10s)
	@set -e; for pkg in $$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

GOFILES = $$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*')

lint: ## Check formatting (gofmt), run go vet and staticcheck (installed with go install if missing)
	@unformatted=$$(gofmt -l $(GOFILES)); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@command -v staticcheck >/dev/null || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" staticcheck ./...

fmt: ## Format every Go file
	gofmt -w $(GOFILES)

proto: ## Regenerate the plugin API code (needs protoc, protoc-gen-go, protoc-gen-go-grpc)
	plugins/proto/gen.sh

proto-check: ## Fail if the committed plugin API code differs from a regeneration
	plugins/proto/gen.sh
	git diff --exit-code -- plugins/proto

run: ## Run realipd serve (CONFIG=file.yaml, default: built-in defaults)
	$(GO) run ./cmd/realipd serve $(if $(CONFIG),--config $(CONFIG))

ci: ## Run what CI runs (.ci/run: installs packages, tests, fuzzes)
	bash .ci/run

clean: ## Remove build output
	rm -rf bin dist
