//go:build linux

package netns

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

//go:embed jupyterhub_config.py
var hubConfig []byte

// Addresses of the bed. All are in 198.18.0.0/24, 198.18.1.0/24 and
// 2001:2:0:N::/64, and live only inside the bed's namespaces.
const (
	ClientIP   = "198.18.0.1"
	ProxyIP    = "198.18.0.2"  // the public proxy, :8000
	HubIP      = "198.18.0.5"  // the hub API, :8081 (proxy side of the bare pod's link)
	BareIP     = "198.18.0.6"  // pod without hubwarden
	WardenIP   = "198.18.0.14" // pod with hubwarden
	DNS4       = "198.18.1.53" // dnsmasq in other
	DNS6       = "2001:2:0:ff::53"
	Forbid4    = "198.18.1.80" // a web server (TCP 80) and UDP echo (9) nothing may reach
	Forbid6    = "2001:2:0:ff::80"
	Allowed4   = "198.18.1.81" // a web server on the allow-list (TCP 80)
	Allowed6   = "2001:2:0:ff::81"
	Blocked4   = "198.18.1.82" // allowed by CIDR but listed in HUBWARDEN_BLOCK
	ProxyIP6   = "2001:2:0:1::2"
	ServerPort = 8888
	Password   = "e2e-pass"
	CHPVersion = "5.2.0"
	// SpawnTimeout bounds a server start (2 CPUs shared with other work).
	SpawnTimeout = 90 * time.Second
)

// VenvRoot is where scripts/python-env.sh installs the Python environments
// (HUBWARDEN_VENV_ROOT, default /opt/hubwarden/venv): hub/ holds the z2jh hub
// image's pins, singleuser/ the user image's.
func VenvRoot() string {
	if v := os.Getenv("HUBWARDEN_VENV_ROOT"); v != "" {
		return v
	}
	return "/opt/hubwarden/venv"
}

// Options configures New.
type Options struct {
	// WorkDir holds logs, hub state and the npm cache (default: ./work).
	WorkDir string
	// Logf receives progress lines (default: discard).
	Logf func(format string, args ...any)
	// BigFile is the size of big.bin in each user's home (default 128 MiB).
	BigFile int64
}

// Bed is a running bed. Close removes everything it made.
type Bed struct {
	Prefix                             string
	Client, Proxy, Bare, Warden, Other NS
	Dir                                string // this run's directory under WorkDir
	BaseURL                            string // the public proxy as seen from the client
	ServiceToken                       string
	Timings                            map[string]time.Duration
	// BareUser and WardenUser own the two pods' servers. They are Unix
	// users made for this run (hwb<pid>, hww<pid>), so that beds of other
	// runs on the same machine never share one.
	BareUser, WardenUser string
	// Versions of the stack the bed runs, by component (JupyterHub,
	// jupyter-server, JupyterLab, configurable-http-proxy).
	Versions map[string]string
	// LabAsset is the path, below a user's server, of one of JupyterLab's
	// static files of about 100 KB (the smallest of at least 100,000 bytes).
	LabAsset string
	// SinkBytes counts the bytes POSTed to the allowed web server (the
	// destination of the direct-egress uploads of part 6).
	SinkBytes atomic.Int64

	opts      Options
	mu        sync.Mutex
	nss       []NS
	procs     []*Proc
	hub       *Proc
	users     []string // users this run created (removed by Close)
	files     []string // files and dirs outside Dir to remove
	listeners []io.Closer
}

func (b *Bed) logf(format string, args ...any) {
	if b.opts.Logf != nil {
		b.opts.Logf(format, args...)
	}
}

// NamePrefix is the prefix of every namespace of this process's beds.
func NamePrefix() string { return fmt.Sprintf("hwe2e-%d-", os.Getpid()) }

// Preflight reports what the bed needs and the machine lacks.
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the e2e bed needs root (network namespaces, users)")
	}
	var missing []string
	for _, p := range []string{
		filepath.Join(VenvRoot(), "hub", "bin", "jupyterhub"),
		filepath.Join(VenvRoot(), "singleuser", "bin", "jupyterhub-singleuser"),
		"/usr/sbin/dnsmasq",
	} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	for _, c := range []string{"ip", "npm", "node", "useradd", "userdel", "runuser", "conntrack", "iptables"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (run scripts/setup.sh: the Python environments of requirements/, dnsmasq-base, conntrack, nodejs with npm)", strings.Join(missing, ", "))
	}
	return nil
}

// New builds the bed: namespaces, links, resolver, web servers, users, hub
// and proxy. It waits until the hub answers through the proxy. On error,
// everything made so far is removed.
func New(ctx context.Context, opts Options) (*Bed, error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if opts.WorkDir == "" {
		opts.WorkDir = "work"
	}
	if opts.BigFile == 0 {
		opts.BigFile = 128 << 20
	}
	if err := Cleanup(opts.Logf); err != nil {
		return nil, fmt.Errorf("removing leftovers of earlier runs: %w", err)
	}
	p := NamePrefix()
	b := &Bed{
		Prefix: p, opts: opts, Timings: map[string]time.Duration{},
		Client: NS{p + "client"}, Proxy: NS{p + "proxy"}, Bare: NS{p + "bare"},
		Warden: NS{p + "warden"}, Other: NS{p + "other"},
		BaseURL:      "http://" + ProxyIP + ":8000",
		ServiceToken: randomToken(),
		BareUser:     fmt.Sprintf("hwb%d", os.Getpid()),
		WardenUser:   fmt.Sprintf("hww%d", os.Getpid()),
		Versions:     map[string]string{},
	}
	abs, err := filepath.Abs(filepath.Join(opts.WorkDir, strings.TrimSuffix(p, "-")))
	if err != nil {
		return nil, fmt.Errorf("resolving the work dir: %w", err)
	}
	b.Dir = abs
	t0 := time.Now()
	if err := b.build(ctx); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	b.Timings["setup"] = time.Since(t0)
	return b, nil
}

func (b *Bed) build(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(b.Dir, "hub"), 0o755); err != nil {
		return fmt.Errorf("making the run dir: %w", err)
	}
	chp, err := installCHP(ctx, filepath.Join(b.opts.WorkDir, "cache"), b.logf)
	if err != nil {
		return err
	}
	t := time.Now()
	if err := b.topology(); err != nil {
		return err
	}
	b.Timings["netns"] = time.Since(t)
	if err := b.other(); err != nil {
		return err
	}
	t = time.Now()
	for _, u := range []string{b.BareUser, b.WardenUser} {
		if err := b.user(u); err != nil {
			return err
		}
	}
	b.Timings["users"] = time.Since(t)
	if err := b.readVersions(chp); err != nil {
		return err
	}
	t = time.Now()
	if err := b.startHub(ctx, chp); err != nil {
		return err
	}
	b.Timings["hub"] = time.Since(t)
	return nil
}

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running %s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// topology makes the namespaces and the veth pairs (created directly inside
// the namespaces: nothing is added to the host netns) with their addresses.
func (b *Bed) topology() error {
	for _, n := range []NS{b.Client, b.Proxy, b.Bare, b.Warden, b.Other} {
		if err := run("ip", "netns", "add", n.Name); err != nil {
			return err
		}
		b.mu.Lock()
		b.nss = append(b.nss, n)
		b.mu.Unlock()
		if err := run("ip", "-n", n.Name, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	type link struct {
		a   NS
		ifa string
		a4  string
		a6  string
		z   NS
		z4  string
		z6  string
	}
	links := []link{
		{b.Proxy, "vc0", ProxyIP + "/30", ProxyIP6 + "/64", b.Client, ClientIP + "/30", "2001:2:0:1::1/64"},
		{b.Proxy, "vp0", HubIP + "/30", "2001:2:0:2::1/64", b.Bare, BareIP + "/30", "2001:2:0:2::2/64"},
		{b.Proxy, "vo0", "198.18.0.9/30", "2001:2:0:3::1/64", b.Other, "198.18.0.10/30", "2001:2:0:3::2/64"},
		{b.Proxy, "vw0", "198.18.0.13/30", "2001:2:0:4::1/64", b.Warden, WardenIP + "/30", "2001:2:0:4::2/64"},
	}
	var cmds [][]string
	for _, l := range links {
		cmds = append(cmds,
			[]string{"ip", "-n", l.a.Name, "link", "add", l.ifa, "type", "veth", "peer", "name", "eth0", "netns", l.z.Name},
			[]string{"ip", "-n", l.a.Name, "addr", "add", l.a4, "dev", l.ifa},
			[]string{"ip", "-n", l.a.Name, "addr", "add", l.a6, "dev", l.ifa, "nodad"},
			[]string{"ip", "-n", l.z.Name, "addr", "add", l.z4, "dev", "eth0"},
			[]string{"ip", "-n", l.z.Name, "addr", "add", l.z6, "dev", "eth0", "nodad"},
			[]string{"ip", "-n", l.a.Name, "link", "set", l.ifa, "up"},
			[]string{"ip", "-n", l.z.Name, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", l.z.Name, "route", "add", "default", "via", strings.TrimSuffix(l.a4, "/30")},
			[]string{"ip", "-n", l.z.Name, "-6", "route", "add", "default", "via", strings.TrimSuffix(l.a6, "/64")},
		)
	}
	for _, a := range []string{DNS4 + "/32", Forbid4 + "/32", Allowed4 + "/32", Blocked4 + "/32"} {
		cmds = append(cmds, []string{"ip", "-n", b.Other.Name, "addr", "add", a, "dev", "lo"})
	}
	for _, a := range []string{DNS6 + "/128", Forbid6 + "/128", Allowed6 + "/128"} {
		cmds = append(cmds, []string{"ip", "-n", b.Other.Name, "addr", "add", a, "dev", "lo", "nodad"})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", b.Proxy.Name, "route", "add", "198.18.1.0/24", "via", "198.18.0.10"},
		[]string{"ip", "-n", b.Proxy.Name, "-6", "route", "add", "2001:2:0:ff::/64", "via", "2001:2:0:3::2"},
		[]string{"ip", "netns", "exec", b.Proxy.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
	)
	for _, c := range cmds {
		if err := run(c...); err != nil {
			return err
		}
	}
	// Per-pod resolv.conf: `ip netns exec` and the spawner bind-mount it.
	// The client gets one too: the browser runs there, and any name it
	// looked up would go to the bed's resolver, not the host's.
	for _, n := range []NS{b.Bare, b.Warden, b.Client} {
		d := "/etc/netns/" + n.Name
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("making %s: %w", d, err)
		}
		b.mu.Lock()
		b.files = append(b.files, d)
		b.mu.Unlock()
		rc := fmt.Sprintf("nameserver %s\nnameserver %s\noptions timeout:1 attempts:1\n", DNS4, DNS6)
		if err := os.WriteFile(d+"/resolv.conf", []byte(rc), 0o644); err != nil {
			return fmt.Errorf("writing resolv.conf of %s: %w", n.Name, err)
		}
	}
	return nil
}

// other starts the resolver and the web servers in the other namespace.
func (b *Bed) other() error {
	p, err := start("dnsmasq", b.Other.Name, []string{"/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
		"--bind-interfaces", "--listen-address=" + DNS4, "--listen-address=" + DNS6, "--except-interface=eth0",
		"--pid-file=", "--user=root", "--cache-size=0",
		"--address=/web.e2e.test/" + Forbid4, "--address=/web.e2e.test/" + Forbid6,
		"--address=/allowed.e2e.test/" + Allowed4, "--address=/allowed.e2e.test/" + Allowed6,
		"--address=/hub.e2e.test/" + HubIP, "--log-facility=-"},
		[]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, b.Dir, filepath.Join(b.Dir, "dnsmasq.log"))
	if err != nil {
		return err
	}
	b.track(p)
	for _, s := range []struct{ addr, body string }{
		{Forbid4 + ":80", "forbidden-web-ok\n"}, {"[" + Forbid6 + "]:80", "forbidden-web-ok\n"},
		{Allowed4 + ":80", "allowed-web-ok\n"}, {"[" + Allowed6 + "]:80", "allowed-web-ok\n"},
		{Blocked4 + ":80", "blocked-web-ok\n"},
	} {
		l, err := b.Other.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("listening on %s in other: %w", s.addr, err)
		}
		body, sink := s.body, strings.HasPrefix(s.body, "allowed")
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if sink && r.Method == http.MethodPost {
				// An upload from a pod: count what arrives, as it arrives.
				buf := make([]byte, 64<<10)
				for {
					n, err := r.Body.Read(buf)
					b.SinkBytes.Add(int64(n))
					if err != nil {
						break
					}
				}
			}
			io.WriteString(w, body)
		}), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		b.mu.Lock()
		b.listeners = append(b.listeners, srv)
		b.mu.Unlock()
	}
	// UDP echo: port 9, 53 as a rogue resolver a tunnel would use, and
	// 7009, a port a user may bind as a source (part 8's spoofed source).
	for _, a := range []string{Forbid4 + ":9", "[" + Forbid6 + "]:9", Forbid4 + ":53", "[" + Forbid6 + "]:53", "[" + Forbid6 + "]:7009"} {
		pc, err := b.Other.ListenPacket("udp", a)
		if err != nil {
			return fmt.Errorf("listening on udp %s in other: %w", a, err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
		b.mu.Lock()
		b.listeners = append(b.listeners, pc)
		b.mu.Unlock()
	}
	// dnsmasq must answer before anything depends on it.
	return poll(10*time.Second, func() error {
		return b.Other.Do(func() error {
			c, err := net.DialTimeout("udp", DNS4+":53", time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Write(dnsQuery(1, "web.e2e.test")); err != nil {
				return err
			}
			buf := make([]byte, 512)
			_, err = c.Read(buf)
			return err
		})
	})
}

// user makes a Unix user for a pod, with test data in its home. The name is
// this run's own (Cleanup removes it if the run is killed).
func (b *Bed) user(name string) error {
	if _, err := user.Lookup(name); err == nil {
		return fmt.Errorf("user %s exists already: another run with this pid left it behind and cleanup did not remove it", name)
	}
	if err := run("useradd", "-m", "-s", "/bin/bash", "-c", "hubwarden e2e", name); err != nil {
		return err
	}
	b.mu.Lock()
	b.users = append(b.users, name)
	b.mu.Unlock()
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("looking up user %s: %w", name, err)
	}
	// The marker lets Cleanup tell the bed's users from real ones.
	if err := os.WriteFile(filepath.Join(u.HomeDir, ".hwe2e"), []byte("made by the hubwarden e2e bed\n"), 0o644); err != nil {
		return fmt.Errorf("marking user %s: %w", name, err)
	}
	if err := run("runuser", "-u", name, "--", "sh", "-c",
		fmt.Sprintf("head -c %d /dev/urandom > ~/big.bin && head -c 2097152 /dev/urandom > ~/mid.bin && head -c 25165824 /dev/urandom > ~/contents.bin && mkdir -p ~/work/a ~/work/b", b.opts.BigFile)); err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return writeNotebooks(u.HomeDir, uid, gid)
}

func (b *Bed) startHub(ctx context.Context, chp string) error {
	dir := filepath.Join(b.Dir, "hub")
	cfg := filepath.Join(b.Dir, "jupyterhub_config.py")
	if err := os.WriteFile(cfg, hubConfig, 0o644); err != nil {
		return fmt.Errorf("writing the hub config: %w", err)
	}
	pods, _ := json.Marshal(map[string]map[string]string{
		b.BareUser:   {"netns": b.Bare.Name, "ip": BareIP},
		b.WardenUser: {"netns": b.Warden.Name, "ip": WardenIP},
	})
	hub := filepath.Join(VenvRoot(), "hub")
	env := []string{
		// The hub's environment first, then the system (no pyenv shims).
		"PATH=" + hub + "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8",
		"E2E_PODS=" + string(pods), "E2E_HUB_IP=" + HubIP, "E2E_CHP=" + chp,
		"E2E_SINGLEUSER_VENV=" + filepath.Join(VenvRoot(), "singleuser"),
		"E2E_PASSWORD=" + Password, "E2E_SERVICE_TOKEN=" + b.ServiceToken,
	}
	p, err := start("jupyterhub", b.Proxy.Name, []string{hub + "/bin/jupyterhub", "-f", cfg}, env, dir, filepath.Join(b.Dir, "hub.log"))
	if err != nil {
		return err
	}
	b.hub = p
	b.track(p)
	c := b.NewClient("")
	// CHP answers 404 until the hub has added its route: wait for a 200.
	return poll(90*time.Second, func() error {
		if done, werr := p.Exited(); done {
			return stop{fmt.Errorf("jupyterhub exited (%w); see %s", exitErr(werr), p.Log)}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(cctx, "GET", b.BaseURL+"/hub/api", nil)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("hub api: %s", resp.Status)
		}
		return nil
	})
}

// installCHP installs configurable-http-proxy (the version z2jh ships) with
// npm into cache once and returns its command.
func installCHP(ctx context.Context, cache string, logf func(string, ...any)) (string, error) {
	prefix, err := filepath.Abs(filepath.Join(cache, "chp-"+CHPVersion))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(prefix, "node_modules", ".bin", "configurable-http-proxy")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if logf != nil {
		logf("installing configurable-http-proxy@%s with npm into %s", CHPVersion, prefix)
	}
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, "configurable-http-proxy@"+CHPVersion)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("installing configurable-http-proxy@%s with npm: %w: %s", CHPVersion, err, out)
	}
	return bin, nil
}

// Stack names the versions of the bed's stack in one line, for the
// report's header; browser is the browser's product string ("" if none).
func (b *Bed) Stack(browser string) string {
	v := b.Versions
	s := fmt.Sprintf("JupyterHub %s (hub), jupyter-server %s, JupyterLab %s, jupyterhub-singleuser %s, ipykernel %s, configurable-http-proxy %s",
		v["JupyterHub"], v["jupyter-server"], v["JupyterLab"], v["jupyterhub-singleuser"], v["ipykernel"], v["configurable-http-proxy"])
	if browser != "" {
		// The product string of Debian's Chromium says Chrome/<version>.
		_, version, _ := strings.Cut(browser, "/")
		s += ", Chromium " + version + " (Debian's, headless)"
	}
	return s
}

// readVersions records the versions of the stack the bed runs, read from
// the installed packages themselves.
func (b *Bed) readVersions(chp string) error {
	py := func(venv, code string) (string, error) {
		out, err := exec.Command(filepath.Join(VenvRoot(), venv, "bin", "python"), "-c", code).Output()
		if err != nil {
			return "", fmt.Errorf("reading versions in %s: %w", venv, err)
		}
		return string(out), nil
	}
	hub, err := py("hub", "import jupyterhub, kubespawner; print(jupyterhub.__version__, kubespawner.__version__)")
	if err != nil {
		return err
	}
	su, err := py("singleuser", "import jupyter_server, jupyterlab, jupyterhub, ipykernel; print(jupyter_server.__version__, jupyterlab.__version__, jupyterhub.__version__, ipykernel.__version__)")
	if err != nil {
		return err
	}
	h, s := strings.Fields(hub), strings.Fields(su)
	if len(h) != 2 || len(s) != 4 {
		return fmt.Errorf("reading versions: unexpected output %q, %q", hub, su)
	}
	var pkg struct {
		Version string `json:"version"`
	}
	// bin is node_modules/.bin/configurable-http-proxy
	pj, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(chp)), "configurable-http-proxy", "package.json"))
	if err != nil {
		return fmt.Errorf("reading the version of configurable-http-proxy: %w", err)
	}
	if err := json.Unmarshal(pj, &pkg); err != nil {
		return fmt.Errorf("reading the version of configurable-http-proxy: %w", err)
	}
	b.Versions["JupyterHub"] = h[0]
	b.Versions["KubeSpawner"] = h[1]
	b.Versions["jupyter-server"] = s[0]
	b.Versions["JupyterLab"] = s[1]
	b.Versions["jupyterhub-singleuser"] = s[2]
	b.Versions["ipykernel"] = s[3]
	b.Versions["configurable-http-proxy"] = pkg.Version

	static := filepath.Join(VenvRoot(), "singleuser", "share", "jupyter", "lab", "static")
	entries, err := os.ReadDir(static)
	if err != nil {
		return fmt.Errorf("listing JupyterLab's static files: %w", err)
	}
	best := int64(-1)
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !strings.HasSuffix(e.Name(), ".js") || info.Size() < 100000 {
			continue
		}
		if best < 0 || info.Size() < best {
			best, b.LabAsset = info.Size(), "/static/lab/"+e.Name()
		}
	}
	if b.LabAsset == "" {
		return fmt.Errorf("no JupyterLab static file of 100 KB in %s", static)
	}
	return nil
}

func (b *Bed) track(p *Proc) {
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
}

// Start runs a process in a namespace of the bed; Close stops it.
func (b *Bed) Start(name string, ns NS, argv, env []string) (*Proc, error) {
	p, err := start(name, ns.Name, argv, env, b.Dir, filepath.Join(b.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	b.track(p)
	return p, nil
}

// AddFile registers a path outside Dir for removal by Close.
func (b *Bed) AddFile(path string) {
	b.mu.Lock()
	b.files = append(b.files, path)
	b.mu.Unlock()
}

// Close stops the hub (which stops the proxy and the servers), every process
// the bed started and anything still running in its namespaces, then deletes
// the namespaces (with their links), /etc/netns dirs and the users it made.
func (b *Bed) Close() error {
	var errs []error
	if b.hub != nil {
		if err := b.hub.Stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	b.mu.Lock()
	procs, nss, users, files, ls := b.procs, b.nss, b.users, b.files, b.listeners
	b.procs, b.nss, b.users, b.files, b.listeners = nil, nil, nil, nil, nil
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range ls {
		l.Close()
	}
	for _, n := range nss {
		if err := removeNS(n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range files {
		if err := os.RemoveAll(f); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", f, err))
		}
	}
	for _, u := range users {
		if err := removeUser(u); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNS kills every process still in the namespace, then deletes it.
func removeNS(name string) error {
	for range 3 {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, s := range pids {
			if pid, err := strconv.Atoi(s); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := run("ip", "netns", "del", name); err != nil {
		return err
	}
	return os.RemoveAll("/etc/netns/" + name)
}

func removeUser(name string) error {
	// Processes of the user (a kernel that outlived its server) block userdel.
	exec.Command("pkill", "-KILL", "-u", name).Run()
	time.Sleep(100 * time.Millisecond)
	return run("userdel", "-r", name)
}

var (
	leftover     = regexp.MustCompile(`^hwe2e-(\d+)-`)
	leftoverUser = regexp.MustCompile(`^hw[bw](\d+)$`)
)

// alive reports whether pid is a running process other than this one.
func alive(pid int) bool {
	return pid != os.Getpid() && syscall.Kill(pid, 0) == nil
}

// Cleanup removes what killed runs left behind: namespaces named
// hwe2e-<pid>-… whose pid no longer runs (with their processes and
// /etc/netns dirs), and the bed's users hwb<pid>/hww<pid> (marked by
// ~/.hwe2e) whose pid no longer runs. This process's own pid counts as gone:
// New calls Cleanup before it makes anything, and a process runs one bed at
// a time. The users of older beds (hwbare,
// hwwarden) are removed only when no bed of any run is alive.
func Cleanup(logf func(string, ...any)) error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var errs []error
	anyAlive := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := leftover.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if alive(pid) {
			anyAlive = true
			continue
		}
		if logf != nil {
			logf("removing leftover namespace %s", f[0])
		}
		if err := removeNS(f[0]); err != nil {
			errs = append(errs, err)
		}
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("reading /etc/passwd: %w", err))...)
	}
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 6 {
			continue
		}
		name, home := f[0], f[5]
		if _, err := os.Stat(filepath.Join(home, ".hwe2e")); err != nil {
			continue // not made by a bed
		}
		if m := leftoverUser.FindStringSubmatch(name); m != nil {
			pid, _ := strconv.Atoi(m[1])
			if alive(pid) {
				continue
			}
		} else if name != "hwbare" && name != "hwwarden" || anyAlive {
			continue
		}
		if logf != nil {
			logf("removing leftover user %s", name)
		}
		if err := removeUser(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stop ends a poll early.
type stop struct{ error }

// poll calls f until it returns nil, a stop error, or d passes.
func poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	wait := 20 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		var s stop
		if errors.As(err, &s) {
			return s.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", d, err)
		}
		time.Sleep(wait)
		if wait < 500*time.Millisecond {
			wait *= 2
		}
	}
}
