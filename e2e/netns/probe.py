# Egress probe, run as the user inside the single-user server's kernel.
# Prints one JSON object: "ok" for a target that answered, else the error.
import json, os, random, socket, string, struct, time

T = {}  # filled in by the harness: addresses


def tcp(host, port, timeout=2.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        return "ok" if s.recv(200) else "empty"
    except Exception as e:
        return "%s %.3fs" % (type(e).__name__, time.monotonic() - t0)
    finally:
        s.close()


def query(name, qid=None):
    qid = random.getrandbits(16) if qid is None else qid
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def udp(host, port, payload=b"ping", timeout=1.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.sendto(payload, (host, port))
        s.recvfrom(2048)
        return "ok"
    except Exception as e:
        return "%s %.3fs" % (type(e).__name__, time.monotonic() - t0)
    finally:
        s.close()


def resolve(name):
    try:
        return "ok " + ",".join(sorted({a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)}))
    except Exception as e:
        return type(e).__name__


def tunnel(server, n, spread):
    """Send n DNS queries with unique names (a tunnel's upload) within
    `spread` seconds and count the answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = errors = answered = 0
    t0 = time.monotonic()
    for i in range(n):
        label = "".join(random.choice(string.ascii_lowercase) for _ in range(30))
        try:
            s.sendto(query(label + ".t.e2e.test", i), (server, 53))
            sent += 1
        except OSError:
            errors += 1
        while time.monotonic() < t0 + spread * (i + 1) / n:
            try:
                s.recvfrom(2048); answered += 1
            except BlockingIOError:
                time.sleep(0.0005)
    elapsed = time.monotonic() - t0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            s.recvfrom(2048); answered += 1
        except BlockingIOError:
            time.sleep(0.005)
    return {"sent": sent, "send_errors": errors, "answered": answered, "elapsed": round(elapsed, 3)}


r = {
    "resolv_conf": open("/etc/resolv.conf").read().split(),
    "resolve_allowed": resolve("allowed.e2e.test"),
    "allowed_tcp4": tcp(T["allowed4"], 80),
    "allowed_tcp6": tcp(T["allowed6"], 80),
    "forbidden_tcp4": tcp(T["forbid4"], 80),
    "forbidden_tcp6": tcp(T["forbid6"], 80),
    "forbidden_udp4": udp(T["forbid4"], 9),
    "forbidden_udp6": udp(T["forbid6"], 9),
    "rogue_dns4": udp(T["forbid4"], 53, query("web.e2e.test")),
    "rogue_dns6": udp(T["forbid6"], 53, query("web.e2e.test")),
    "blocked_tcp4": tcp(T["blocked4"], 80),
    "metadata_tcp4": tcp("169.254.169.254", 80, 1.0),
    "dns_resolver4": udp(T["dns4"], 53, query("web.e2e.test")),
    "dns_resolver6": udp(T["dns6"], 53, query("web.e2e.test")),
    "hub_api": tcp(T["hub"], 8081),
}
r["tunnel"] = tunnel(T["dns4"], T["tunnel_n"], T["tunnel_spread"])
print(json.dumps(r))
