module github.com/hubwarden/hubwarden/e2e

go 1.26.0

require golang.org/x/sys v0.49.0 // indirect
