package egress

// Golden iptables-restore documents of the cases in plan_test.go, reviewed by hand.

const goldenDefaults = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -d 10.100.0.5/32 -p tcp -m tcp --dport 8081 -j ACCEPT -m comment --comment "hubwarden: hub api tcp://hub:8081"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -j ACCEPT -m comment --comment "hubwarden: dns within 20/s, burst 100"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp router solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -j ACCEPT -m comment --comment "hubwarden: dns within 20/s, burst 100"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
`

const goldenAllowList = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -d 198.51.100.0/24 -j ACCEPT -m comment --comment "hubwarden: allow 198.51.100.0/24"
-A HUBWARDEN-EGRESS -d 151.101.0.223/32 -p tcp -m tcp --dport 443 -j ACCEPT -m comment --comment "hubwarden: allow tcp://pypi.org:443"
-A HUBWARDEN-EGRESS -d 151.101.64.223/32 -p tcp -m tcp --dport 443 -j ACCEPT -m comment --comment "hubwarden: allow tcp://pypi.org:443"
-A HUBWARDEN-EGRESS -d 192.0.2.123/32 -p udp -j ACCEPT -m comment --comment "hubwarden: allow udp://ntp.example.org"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 200 --hashlimit-name hwdns32-c8 -j ACCEPT -m comment --comment "hubwarden: dns within 50/s, burst 200"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128"
-A HUBWARDEN-EGRESS -d fd00:10::a/128 -p udp -m udp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver fd00:10::a (udp)"
-A HUBWARDEN-EGRESS -d fd00:10::a/128 -p tcp -m tcp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver fd00:10::a (tcp)"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp router solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel"
-A HUBWARDEN-EGRESS -d 2a04:4e42::223/128 -p tcp -m tcp --dport 443 -j ACCEPT -m comment --comment "hubwarden: allow tcp://pypi.org:443"
-A HUBWARDEN-EGRESS -d 2001:db8::1/128 -p udp -m udp --dport 123 -j ACCEPT -m comment --comment "hubwarden: allow udp://[2001:db8::1]:123"
-A HUBWARDEN-EGRESS -d 2001:db8:1::/48 -j ACCEPT -m comment --comment "hubwarden: allow 2001:db8:1::/48"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 200 --hashlimit-name hwdns32-c8 -j ACCEPT -m comment --comment "hubwarden: dns within 50/s, burst 200"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 7 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
`

const goldenIPv6Off = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (udp)"
-A HUBWARDEN-EGRESS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 10.96.0.10 (tcp)"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -d 192.0.2.0/24 -j ACCEPT -m comment --comment "hubwarden: allow 192.0.2.0/24"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -j ACCEPT -m comment --comment "hubwarden: dns within 20/s, burst 100"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
`

const goldenMetadata = `
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p udp -m udp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 169.254.169.254 inside a blocked range, port 53 only (udp)"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p tcp -m tcp --dport 53 -j HUBWARDEN-EGRESS-DNS -m comment --comment "hubwarden: dns to resolver 169.254.169.254 inside a blocked range, port 53 only (tcp)"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: 169.254.169.254/32"
-A HUBWARDEN-EGRESS -d 10.1.0.0/16 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: blocked by HUBWARDEN_BLOCK: 10.1.0.0/16"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -d 169.254.0.0/16 -j ACCEPT -m comment --comment "hubwarden: allow 169.254.0.0/16"
-A HUBWARDEN-EGRESS -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j ACCEPT -m comment --comment "hubwarden: allow tcp://169.254.169.254:80"
-A HUBWARDEN-EGRESS -d 10.0.0.0/8 -j ACCEPT -m comment --comment "hubwarden: allow 10.0.0.0/8"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -j ACCEPT -m comment --comment "hubwarden: dns within 20/s, burst 100"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp-port-unreachable -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
*filter
:HUBWARDEN-EGRESS - [0:0]
:HUBWARDEN-EGRESS-DNS - [0:0]
:HUBWARDEN-EGRESS-BLOCK - [0:0]
-A HUBWARDEN-EGRESS -o lo -j ACCEPT -m comment --comment "hubwarden: loopback"
-A HUBWARDEN-EGRESS -d fd00:ec2::254/128 -j HUBWARDEN-EGRESS-BLOCK -m comment --comment "hubwarden: cloud metadata, always rejected: fd00:ec2::254/128"
-A HUBWARDEN-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment "hubwarden: replies and related"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp router solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour solicitation from the kernel"
-A HUBWARDEN-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m owner ! --uid-owner 0-4294967294 -j ACCEPT -m comment --comment "hubwarden: ndp neighbour advertisement from the kernel"
-A HUBWARDEN-EGRESS -d fd00::/8 -j ACCEPT -m comment --comment "hubwarden: allow fd00::/8"
-A HUBWARDEN-EGRESS -j NFLOG --nflog-prefix hubwarden-deny --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log denied"
-A HUBWARDEN-EGRESS -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: deny tcp with a reset"
-A HUBWARDEN-EGRESS -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: deny the rest with an icmp error"
-A HUBWARDEN-EGRESS-DNS -m hashlimit --hashlimit-upto 20/sec --hashlimit-burst 100 --hashlimit-name hwdns14-64 -j ACCEPT -m comment --comment "hubwarden: dns within 20/s, burst 100"
-A HUBWARDEN-EGRESS-DNS -j NFLOG --nflog-prefix hubwarden-dns-rate --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log dns over the rate"
-A HUBWARDEN-EGRESS-DNS -j DROP -m comment --comment "hubwarden: drop dns over the rate (clients retry)"
-A HUBWARDEN-EGRESS-BLOCK -j NFLOG --nflog-prefix hubwarden-block --nflog-group 1987 --nflog-size 128 --nflog-threshold 32 -m comment --comment "hubwarden: log blocked"
-A HUBWARDEN-EGRESS-BLOCK -p tcp -j REJECT --reject-with tcp-reset -m comment --comment "hubwarden: reject blocked tcp with a reset"
-A HUBWARDEN-EGRESS-BLOCK -j REJECT --reject-with icmp6-adm-prohibited -m comment --comment "hubwarden: reject blocked with an icmp error"
COMMIT
`
