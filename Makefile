# lazyblk. `sudo make demo` and `sudo make test` set up everything they need.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     := bin/lazyblk
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build deps demo test lint bench bench-convert bench-ublk fuzz soak proto clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/lazyblk

deps:
	./scripts/install-deps.sh

demo: deps build
	./scripts/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Groups of packages, each with an explicit -timeout, and a per-package
# timing summary at the end (scripts/test.sh says why each group runs as
# it does).
test: deps lint build
	GO=$(GO) ./scripts/test.sh

# Every parser that faces a peer, FUZZTIME each (default 30s); what the
# fuzzer finds goes to the committed corpora (scripts/fuzz.sh).
fuzz:
	GO=$(GO) ./scripts/fuzz.sh

# The cold-start benchmarks: pull vs lazy vs lazy+trace vs warm, sparse
# and dense workloads (coldstart.sh); then the AI start-up on one mount,
# import torch and read the weights (ai.sh). Both write bench-out/.
bench: deps build
	./scripts/bench/coldstart.sh
	./scripts/bench/ai.sh

bench-convert: deps build
	./scripts/bench/convert.sh

# ublk against kernel NBD on one image in one QEMU guest (warm, fio direct
# I/O: sequential 1 MiB, random 4 KiB at queue depth 32); prints the ratios.
bench-ublk: deps
	$(GO) test ./e2e -run '^$$' -bench BenchmarkUblkVsNBD -benchtime 1x -timeout 20m -v | tee bench-out/ublk.txt

# Regenerates the fetcher daemon's gRPC API (not needed to build: the
# generated code is committed). Needs protoc (apt: protobuf-compiler).
proto:
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
	PATH=$(CURDIR)/bin:$$PATH protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative api/fetcher/v1/fetcher.proto

clean:
	rm -rf bin

# The soak: several mounts, concurrent verifying readers, faults at seeded
# random times (e2e/soak_test.go). make soak SOAK=10m SOAK_SEED=7
SOAK ?= 10m
soak: deps build
	SOAK=$(SOAK) $(GO) test -count=1 -timeout 2h -v -run '^TestSoak$$' ./e2e >soak.log 2>&1; s=$$?; \
		tail -n 12 soak.log; echo "(full log: soak.log)"; exit $$s
