#!/bin/bash
# A stand-in for `hubwarden`, used only to test the e2e harness and proofs
# before the real sidecar is complete (HWE2E_HUBWARDEN=testdata/fake-hubwarden.sh).
# It applies the recipe of docs/e2e.md with iptables/tc commands: HTB with a
# slow class, CLASSIFY on a ctmark bit, a connbytes demotion at FLOW_BUDGET
# (no token buckets, no promotion, no pod budget: proof parts 3 and 4 are
# expected to FAIL with it), an egress allow-list with a DNS rate limit, a
# reconcile loop, and /readyz. Bed addresses are hard-coded.
set -euo pipefail
cmd=${1:-}
MARK=0x100000
case "$cmd" in
verify)
  # as the user: the forbidden server must be refused, and we must lack NET_ADMIN
  if /usr/bin/python3 -c 'import socket,sys; s=socket.create_connection(("198.18.1.80",80),2)' 2>/dev/null; then
    echo "verify: FAIL: 198.18.1.80:80 reachable"; exit 1; fi
  echo "verify: ok"; exit 0 ;;
run) ;;
*) echo "unknown command \"$cmd\"" >&2; exit 2 ;;
esac
rate=${HUBWARDEN_SLOW_RATE:-1mbit}
[[ $rate =~ ^[0-9]+[kmg]?bit$ ]] || { echo "invalid configuration: HUBWARDEN_SLOW_RATE: \"$rate\" is not a rate" >&2; exit 1; }
to_bytes() { case $1 in *MiB) echo $(( ${1%MiB} * 1048576 ));; *KiB) echo $(( ${1%KiB} * 1024 ));; *) echo "$1";; esac; }
budget=$(to_bytes "${HUBWARDEN_FLOW_BUDGET:-64MiB}")
dev=eth0
sysctl -qw net.netfilter.nf_conntrack_acct=1
apply() {
  if ! tc qdisc show dev $dev | grep -q 'htb 1:'; then
    tc qdisc del dev $dev root 2>/dev/null || true
    tc qdisc add dev $dev root handle 1: htb default 10
    tc class add dev $dev parent 1: classid 1:1 htb rate 10gbit ceil 10gbit burst 1m cburst 1m quantum 200000
    tc class add dev $dev parent 1:1 classid 1:10 htb rate 10gbit ceil 10gbit burst 1m cburst 1m quantum 200000 prio 0
    tc class add dev $dev parent 1:1 classid 1:20 htb rate "$rate" ceil "$rate" burst 15k cburst 15k quantum 1514 prio 1
    tc qdisc add dev $dev parent 1:10 handle 10: pfifo limit 1000
    tc qdisc add dev $dev parent 1:20 handle 20: bfifo limit 256kb
  fi
  for T in iptables ip6tables; do
    $T -t mangle -N HUBWARDEN-SHAPE 2>/dev/null || $T -t mangle -F HUBWARDEN-SHAPE
    $T -t mangle -A HUBWARDEN-SHAPE -m connbytes --connbytes "$budget": --connbytes-dir reply --connbytes-mode bytes -j CONNMARK --set-xmark $MARK/$MARK
    $T -t mangle -A HUBWARDEN-SHAPE -m connmark --mark $MARK/$MARK -j CLASSIFY --set-class 1:20
    $T -t mangle -C POSTROUTING -o $dev -j HUBWARDEN-SHAPE 2>/dev/null || $T -t mangle -A POSTROUTING -o $dev -j HUBWARDEN-SHAPE
    $T -N HUBWARDEN-EGRESS 2>/dev/null || $T -F HUBWARDEN-EGRESS
    $T -A HUBWARDEN-EGRESS -o lo -j ACCEPT
    $T -A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  done
  iptables -A HUBWARDEN-EGRESS -d 198.18.1.82 -j REJECT
  iptables -A HUBWARDEN-EGRESS -d 169.254.169.254 -j REJECT
  iptables -A HUBWARDEN-EGRESS -d 198.18.0.5 -p tcp --dport 8081 -j ACCEPT
  iptables -A HUBWARDEN-EGRESS -d 198.18.1.81 -p tcp --dport 80 -j ACCEPT
  iptables -A HUBWARDEN-EGRESS -d 198.18.1.53 -p udp --dport 53 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns4 -j ACCEPT
  iptables -A HUBWARDEN-EGRESS -d 198.18.1.53 -p tcp --dport 53 -j ACCEPT
  iptables -A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset
  iptables -A HUBWARDEN-EGRESS -j REJECT
  for t in 135 136 133; do ip6tables -A HUBWARDEN-EGRESS -p ipv6-icmp --icmpv6-type $t -j ACCEPT; done
  ip6tables -A HUBWARDEN-EGRESS -d 2001:2:0:ff::81 -p tcp --dport 80 -j ACCEPT
  ip6tables -A HUBWARDEN-EGRESS -d 2001:2:0:ff::53 -p udp --dport 53 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns6 -j ACCEPT
  ip6tables -A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset
  ip6tables -A HUBWARDEN-EGRESS -j REJECT
  for T in iptables ip6tables; do
    $T -C OUTPUT -j HUBWARDEN-EGRESS 2>/dev/null || $T -A OUTPUT -j HUBWARDEN-EGRESS
  done
}
apply
state=$(mktemp -d /tmp/fake-hubwarden.XXXXXX)
trap 'rm -rf "$state"' EXIT
echo ok > "$state/readyz"
/usr/bin/python3 -m http.server 9280 --bind 127.0.0.1 --directory "$state" >/dev/null 2>&1 &
echo "fake hubwarden: applied, serving /readyz"
while sleep 2; do
  for T in iptables ip6tables; do
    $T -C OUTPUT -j HUBWARDEN-EGRESS 2>/dev/null || { echo "reconcile: $T OUTPUT jump re-added"; $T -A OUTPUT -j HUBWARDEN-EGRESS; }
  done
done
