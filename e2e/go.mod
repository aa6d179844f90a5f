module github.com/hubwarden/hubwarden/e2e

go 1.26.0

require (
	github.com/chromedp/cdproto v0.160.5
	github.com/chromedp/chromedp v0.24.0
	github.com/coder/websocket v1.8.15
	github.com/google/go-cmp v0.7.0
	golang.org/x/sys v0.49.0
)

require github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect

require github.com/hubwarden/hubwarden v0.0.0-00010101000000-000000000000

// The bed builds hubwarden with the main module's own builder
// (internal/hwtest), from this checkout.
replace github.com/hubwarden/hubwarden => ../
