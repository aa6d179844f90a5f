package egress

// Golden iptables-restore documents of the cases in plan_test.go, reviewed by hand.

const goldenDefaults = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d 169.254.169.254/32 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and 169.254.169.254/32" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d 10.100.0.5/32 -p tcp -m tcp --dport 8081 -m comment --comment "hubwarden: hub api tcp://hub:8081" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp-port-unreachable
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 20/s, burst 100" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp-port-unreachable
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d fd00:ec2::254/128 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and fd00:ec2::254/128" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp router solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d ff02::16/128 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: mld report from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 20/s, burst 100" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
`

const goldenAllowList = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d 169.254.169.254/32 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and 169.254.169.254/32" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d 198.51.100.0/24 -m comment --comment "hubwarden: allow 198.51.100.0/24" -j ACCEPT
-A HUBWARDEN-EGRESS -d 151.101.0.223/32 -p tcp -m tcp --dport 443 -m comment --comment "hubwarden: allow tcp://pypi.org:443" -j ACCEPT
-A HUBWARDEN-EGRESS -d 151.101.64.223/32 -p tcp -m tcp --dport 443 -m comment --comment "hubwarden: allow tcp://pypi.org:443" -j ACCEPT
-A HUBWARDEN-EGRESS -d 192.0.2.123/32 -p udp -m comment --comment "hubwarden: allow udp://ntp.example.org" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp-port-unreachable
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 200 --hashlimit-name hwdns32-c8 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 50/s, burst 200" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp-port-unreachable
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d fd00:ec2::254/128 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and fd00:ec2::254/128" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -d fd00:10::a/128 -p udp -m udp --dport 53 -m comment --comment "hubwarden: dns to resolver fd00:10::a (udp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d fd00:10::a/128 -p tcp -m tcp --dport 53 -m comment --comment "hubwarden: dns to resolver fd00:10::a (tcp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp router solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d ff02::16/128 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: mld report from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d 2a04:4e42::223/128 -p tcp -m tcp --dport 443 -m comment --comment "hubwarden: allow tcp://pypi.org:443" -j ACCEPT
-A HUBWARDEN-EGRESS -d 2001:db8::1/128 -p udp -m udp --dport 123 -m comment --comment "hubwarden: allow udp://[2001:db8::1]:123" -j ACCEPT
-A HUBWARDEN-EGRESS -d 2001:db8:1::/48 -m comment --comment "hubwarden: allow 2001:db8:1::/48" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 200 --hashlimit-name hwdns32-c8 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 50/s, burst 200" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 7 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
`

const goldenIPv6Off = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d 169.254.169.254/32 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and 169.254.169.254/32" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d 192.0.2.0/24 -m comment --comment "hubwarden: allow 192.0.2.0/24" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp-port-unreachable
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 20/s, burst 100" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp-port-unreachable
COMMIT
`

const goldenMetadata = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p udp -m udp --dport 53 -m comment --comment "hubwarden: dns to resolver 169.254.169.254 inside a blocked range, port 53 only (udp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p tcp -m tcp --dport 53 -m comment --comment "hubwarden: dns to resolver 169.254.169.254 inside a blocked range, port 53 only (tcp)" -j HUBWARDEN-EGRESS-DNS
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -d 10.1.0.0/16 -m comment --comment "hubwarden: blocked by HUBWARDEN_BLOCK: 10.1.0.0/16" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: replies and established tcp flows, but dns" -j ACCEPT
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d 169.254.0.0/16 -m comment --comment "hubwarden: allow 169.254.0.0/16" -j ACCEPT
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "hubwarden: allow tcp://169.254.169.254:80" -j ACCEPT
-A HUBWARDEN-EGRESS -d 10.0.0.0/8 -m comment --comment "hubwarden: allow 10.0.0.0/8" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp-port-unreachable
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 20/s, burst 100" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp-port-unreachable
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS ! -d fd00:ec2::254/128 -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -m comment --comment "hubwarden: established tcp flows, but dns and fd00:ec2::254/128" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128" -j HUBWARDEN-EGRESS-BLOCK
-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate ESTABLISHED -m comment --comment "hubwarden: replies" -j ACCEPT
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: errors about a flow, from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp router solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d ff02::16/128 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -m owner ! --uid-owner 0-4294967294 -m comment --comment "hubwarden: mld report from the kernel" -j ACCEPT
-A HUBWARDEN-EGRESS -d fd00::/8 -m comment --comment "hubwarden: allow fd00::/8" -j ACCEPT
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: log denied" -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: deny tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: deny the rest with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
-A HUBWARDEN-EGRESS-DNS -m length --length 0:512 -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -m comment --comment "hubwarden: dns packets up to 512 bytes, within 20/s, burst 100" -j ACCEPT
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: log dns over the rate or size" -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: drop dns over the rate or size (the sender gets EPERM)" -j DROP
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: log blocked" -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32
-A HUBWARDEN-EGRESS-BLOCK -p tcp -m comment --comment "hubwarden: reject blocked tcp with a reset" -j REJECT --reject-with tcp-reset
-A HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: reject blocked with an icmp error" -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
`
