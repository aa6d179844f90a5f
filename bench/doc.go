// Package bench holds `make bench`: root-only measurements of hubwarden
// against the alternatives (nothing, a flat rate limit, kernel-only
// per-flow connbytes, a naive 1 s poller), each in fresh network namespaces
// (internal/nstest, subnet indexes 70-79), side by side in one run. The
// measurements are tests behind the build tag "bench" so that `go test ./...`
// never runs them; scripts/bench.sh runs them and writes BENCHMARKS.md.
package bench
