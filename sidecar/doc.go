// Command hubwarden is the sidecar that makes bulk data exfiltration from a
// JupyterHub user pod slow, blocked where it goes direct, and attributable.
//
// Usage:
//
//	hubwarden init     apply egress filtering and shaping once, self-check, exit 0
//	hubwarden run      apply, then watch, reconcile and serve health until SIGTERM
//	hubwarden plan     print what would be applied (iptables-restore text, tc objects)
//	hubwarden check    compare the kernel with the plan; exit 1 with a diff if they differ
//	hubwarden verify   run inside the notebook container: prove the lockdown holds
//	hubwarden version  print the version
//
// Configuration is read from HUBWARDEN_* environment variables only (an
// unknown HUBWARDEN_* variable is an error; variables without the prefix are
// never read). `hubwarden --help` prints this list from the code:
//
//	VARIABLE                      DEFAULT             MEANING
//	HUBWARDEN_LOG_LEVEL           info                log level: debug, info, warn or error
//	HUBWARDEN_USER                -                   user name written on every audit line (z2jh: {username})
//	HUBWARDEN_SERVER              -                   server name written on every audit line (z2jh: {servername})
//	HUBWARDEN_STATE_DIR           /run/hubwarden      directory that survives container restarts (an emptyDir): what start-up detected (iptables backend, pod gate, leaf qdiscs), pod budget level
//	HUBWARDEN_IPTABLES_BACKEND    auto                iptables backend: auto (probe once, then remember in STATE_DIR), legacy or nft
//	HUBWARDEN_IPV6                auto                apply IPv6 rules: auto (when the kernel has IPv6), true (fail if it cannot) or false
//	HUBWARDEN_STARTUP_TIMEOUT     30s                 deadline for apply and self-test at start; a hang becomes a crash that Kubernetes restarts
//	HUBWARDEN_EGRESS              true                filter egress: default deny, allow-list, DNS only to the resolvers, metadata always blocked
//	HUBWARDEN_ALLOW               -                   allow-list, comma separated: [tcp://|udp://]DEST[:PORT[-PORT]], DEST an IP, a CIDR, [IPv6] or a host name (re-resolved on its TTL)
//	HUBWARDEN_DNS_SERVERS         -                   resolvers the pod may query (UDP and TCP 53), comma separated; empty: the nameservers of /etc/resolv.conf
//	HUBWARDEN_DNS_RATE            20                  DNS packets per second the pod may send to the resolvers (beyond the burst); bounds DNS tunnelling
//	HUBWARDEN_DNS_BURST           100                 DNS packets the pod may send in a burst before DNS_RATE applies
//	HUBWARDEN_HUB_API_URL         -                   the hub API the server must reach; empty: JUPYTERHUB_API_URL; its host and port are allowed
//	HUBWARDEN_BLOCK               -                   extra CIDRs always rejected, even if an allow entry covers them (169.254.169.254 and fd00:ec2::254 always are)
//	HUBWARDEN_NFLOG_GROUP         1987                NFLOG group that denied packets are logged to (0-65535)
//	HUBWARDEN_RESOLVE_MIN_TTL     30s                 shortest interval between re-resolutions of an allow-list host name, whatever its TTL
//	HUBWARDEN_SHAPE               true                shape pod egress with HTB: a slow class for demoted flows; the rest leaves unshaped (HTB's direct queue) unless FAST_RATE caps it
//	HUBWARDEN_INTERFACE           -                   interface to shape; empty: the interface of the default route
//	HUBWARDEN_FAST_RATE           -                   a cap on everything the pod sends (a fast class for what is not demoted); empty: no cap, what is not demoted takes HTB's direct queue, with no class and no rate
//	HUBWARDEN_SLOW_RATE           1mbit               rate shared by all demoted flows of the pod
//	HUBWARDEN_CTMARK              0x100000            the connection-mark bit of demoted flows (exactly one bit, at most 0x4000000); hubwarden also owns the five bits above it (attention and the tripwire tier) and leaves every other bit alone
//	HUBWARDEN_WATCH               true                run the conntrack watcher (budgets, demotion, promotion, audit)
//	HUBWARDEN_FLOW_BUDGET         64MiB               per-flow token bucket burst: bytes a flow may send fast before it is demoted
//	HUBWARDEN_FLOW_REFILL         1MiB/s              per-flow token bucket refill
//	HUBWARDEN_POD_BUDGET          256MiB              per-pod token bucket burst over all flows: bounds parallel and short connections
//	HUBWARDEN_POD_REFILL          256KiB/s            per-pod token bucket refill: the long-run rate a user can move data out (slow bytes count against it too)
//	HUBWARDEN_PROMOTE_IDLE        2s                  a demoted flow idle this long is promoted back to the fast path, if the pod bucket allows
//	HUBWARDEN_DUMP_INTERVAL       1s                  how often each demoted flow is read to see whether it went idle (to promote it); also the interval between conntrack dumps while a flow is busy or the kernel's events cannot be relied on (otherwise a dump every 10 s, or DUMP_INTERVAL if longer)
//	HUBWARDEN_PROGRESS_INTERVAL   60s                 interval of audit progress lines for long-lived flows
//	HUBWARDEN_GUARD               enforce             HTTP guard in front of the notebook server: enforce (serve notebooks only, refuse download routes), audit (decide and log every request, refuse nothing) or off (no redirect)
//	HUBWARDEN_SERVER_PORT         8888                the notebook server's port (z2jh's notebook-port); inbound connections to it are redirected to the guard
//	HUBWARDEN_GUARD_PORT          9281                port the guard listens on; only its own (transparent) socket may take connections there
//	HUBWARDEN_SERVER_BASE_URL     -                   the server's base URL as JupyterHub builds it, unescaped (z2jh: /user/{unescaped_username}/{unescaped_servername}); the guard escapes it as JupyterHub does and refuses every request outside it; empty: /user/USER/SERVER/ from HUBWARDEN_USER and HUBWARDEN_SERVER
//	HUBWARDEN_GUARD_MAX_NOTEBOOK  32MiB               largest notebook (and directory listing) the guard passes, as the server's JSON model
//	HUBWARDEN_GUARD_TERMINALS     true                allow terminals (false refuses the terminal pages, API and websockets)
//	HUBWARDEN_GUARD_PROXY_ALLOW   -                   path prefixes under the base URL the guard passes unchecked, comma separated (jupyter-server-proxy services like proxy/8050/ or rstudio/, other extensions); none by default
//	HUBWARDEN_HEALTH_ADDR         :9280               address of the read-only HTTP server: /healthz, /readyz, /metrics
//	HUBWARDEN_RECONCILE_INTERVAL  10s                 interval of the drift check that re-applies hubwarden's rules and qdiscs
//	HUBWARDEN_DENY_LOG_WINDOW     10s                 window over which denied packets are aggregated into one log line per destination
//	HUBWARDEN_SELFTEST_TARGET     169.254.169.254:80  address the self-test connects to and must see refused (rejected locally, nothing leaves the pod)
//
// Exit status: 0 on success; 1 on any error (a configuration error changes
// nothing in the kernel) and, for check, when the kernel differs from the
// plan; 2 without a command.
package main
