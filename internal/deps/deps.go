//go:build deps

// Package deps pins the module's dependencies before the code that uses them lands.
package deps

import (
	_ "github.com/coreos/go-iptables/iptables"
	_ "github.com/florianl/go-tc"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/kelseyhightower/envconfig"
	_ "github.com/mdlayher/netlink"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/rs/zerolog"
	_ "golang.org/x/net/dns/dnsmessage"
	_ "golang.org/x/sys/unix"
)
