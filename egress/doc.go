// Package egress plans hubwarden's egress policy: the allow-list syntax
// (ParseEntry) and, from a Config and the current addresses of the
// allow-listed host names, the iptables and ip6tables filter chains (Plan)
// that accept loopback, DNS to the resolvers (rate-limited), replies, the
// hub API and the allow-list, always reject the cloud metadata endpoints,
// and log and reject everything else. Plan is pure; package xtables applies.
package egress
