// Package adversary holds the root tests that play the notebook user
// against hubwarden: an unprivileged user (uid nobody, no capabilities) and
// root without NET_ADMIN but with the NET_RAW Kubernetes grants, each
// attack beside a control that shows it works without the protection.
// They run the real binary (internal/hwtest) in network namespaces; the
// findings are issue 15's (docs/adversary.md).
package adversary
