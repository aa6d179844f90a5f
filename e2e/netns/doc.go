// Package netns builds hubwarden's end-to-end bed: a Zero-to-JupyterHub user
// pod made of Linux network namespaces, with real JupyterHub parts.
//
//	client ── proxy (JupyterHub + configurable-http-proxy 5.2.0, router) ─┬─ bare pod   (single-user server, nothing else)
//	                                                                       ├─ warden pod (single-user server + `hubwarden run`)
//	                                                                       └─ other      (dnsmasq resolver, forbidden and allowed web servers)
//
// Two pods, one per test user, let every workload run side by side in one
// run: the same requests through the same hub and proxy, to a server without
// hubwarden and to one with it. Addresses come only from 198.18.0.0/24,
// 198.18.1.0/24 and 2001:2:0:1::/64 .. 2001:2:0:ff::/64; the proxy netns has
// no default route, so nothing leaves the bed.
//
// A Bed tracks every namespace, process, user and file it made and removes
// them in Close, which tests register with t.Cleanup (it also runs after a
// panic). Leftovers of a run that was killed (namespaces named
// hwe2e-<pid>-… whose pid is gone) are removed by Cleanup, which New calls
// first and `hwe2e cleanup` exposes.
package netns
