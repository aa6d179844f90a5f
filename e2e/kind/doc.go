// Package kind holds the real-cluster check of hubwarden, run.sh, and tests
// of the parts of it that run without a Docker engine: argument handling,
// the dry-run plan and the manifests it renders.
package kind
