// Package guard is hubwarden's HTTP guard: a reverse proxy in front of the
// single-user Jupyter server that serves notebooks only.
//
// Inbound connections to the server's port are redirected in the pod's
// network namespace (nat PREROUTING REDIRECT, both families; Plan) to the
// guard, which proxies to the server over loopback. Every request is parsed
// once (Go's HTTP/1 server), routed exactly as tornado 6.5 and jupyter-server
// 2.19 route it (Router), and decided by a pure policy (Policy.Decide): the
// UI, kernels, sessions, terminals, saving and uploading pass; /files/,
// /view/, /nbconvert/, file contents other than notebooks, proxies and
// unknown routes are refused; answers that can carry bytes the user wrote
// are checked (a contents answer must be a notebook model under a cap, or
// carry no file content at all). The request forwarded is the request
// decided on: the same method, the same target byte for byte, the same
// headers.
//
// Every request gets one audit line, every websocket one when it closes and
// progress lines while it lasts (audit.go); metrics count requests and bytes
// by decision and route family (metrics.go). docs/guard.md lists every route
// family with its decision.
package guard
