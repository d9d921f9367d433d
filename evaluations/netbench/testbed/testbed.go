// Package testbed builds an isolated test network on one Linux machine:
// one network namespace per host, each joined by a veth pair to one bridge
// that lives in a namespace of its own, so that nothing is added to the
// machine's own namespace. Addresses come from 198.18.0.0/15 (the
// benchmarking range), no namespace has a default route, forwarding is off,
// and every link is shaped with tc (tbf) in both directions, so that its
// counters say what it carried.
//
// Everything a testbed makes is named after its prefix
// ("fdxnb-<pid>-<tag>-"), so that Cleanup finds and removes what a crashed
// run left behind, and CleanupStale the leftovers of processes that no
// longer exist.
package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Root starts the name of everything any testbed makes.
const Root = "fdxnb-"

// Subnet is the only range a testbed's addresses come from.
var Subnet = netip.MustParsePrefix("198.18.0.0/15")

// firstHost is the offset of the first host's address in Subnet.
const firstHost = 10

// Names of the interfaces: each host sees its link as eth0; the bridge
// namespace holds br0 and the hosts' peers p<i>.
const (
	hostIf   = "eth0"
	bridgeIf = "br0"
)

// HostSpec describes one host of the network.
type HostSpec struct {
	// Name is short and unique in the testbed: [a-z0-9]{1,12}.
	Name string
	// Egress and Ingress are the link's rates in bits/s, host to bridge
	// and bridge to host; 0 leaves a direction unshaped (still counted).
	Egress, Ingress int64
}

// Spec describes a testbed.
type Spec struct {
	// Tag tells this testbed from others of the same process:
	// [a-z0-9]{1,16}.
	Tag   string
	Hosts []HostSpec
	Log   *slog.Logger
}

// Host is one host of a built testbed.
type Host struct {
	Name string
	// NS is its network namespace.
	NS   string
	Addr netip.Addr
	// Egress and Ingress are the current rates (bits/s, 0: unshaped).
	Egress, Ingress int64
	// peer is its link's end in the bridge namespace.
	peer string
}

// Testbed is a built network. Close removes it.
type Testbed struct {
	prefix   string
	bridgeNS string
	hosts    []*Host
	log      *slog.Logger
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]{1,12}$`)
	tagRE  = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
)

// Prefix returns the name prefix of a testbed of this process with tag.
func Prefix(tag string) string { return fmt.Sprintf("%s%d-%s-", Root, os.Getpid(), tag) }

// Preflight says why this process cannot build a testbed: not root, or
// no ip / tc.
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the network testbed needs root: it creates network namespaces, veth pairs, a bridge and tc qdiscs (run as root, e.g. with sudo)")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the network testbed needs %q (iproute2): %w", tool, err)
		}
	}
	return nil
}

// New builds the network spec describes and checks its isolation. On any
// failure it removes what it made.
func New(ctx context.Context, spec Spec) (tb *Testbed, err error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if !tagRE.MatchString(spec.Tag) {
		return nil, fmt.Errorf("testbed tag %q: want [a-z0-9]{1,16}", spec.Tag)
	}
	if len(spec.Hosts) == 0 {
		return nil, errors.New("testbed: no hosts")
	}
	log := spec.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Testbed{prefix: Prefix(spec.Tag), log: log}
	t.bridgeNS = t.prefix + "br"
	existing, err := Namespaces(ctx, t.prefix)
	if err != nil {
		return nil, err
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("testbed %s exists already (namespaces %s): remove it with Cleanup", t.prefix, strings.Join(existing, ", "))
	}
	seen := map[string]bool{"br": true}
	for i, hs := range spec.Hosts {
		if !nameRE.MatchString(hs.Name) || seen[hs.Name] {
			return nil, fmt.Errorf("testbed host %q: want a unique [a-z0-9]{1,12}, not \"br\"", hs.Name)
		}
		if hs.Egress < 0 || hs.Ingress < 0 {
			return nil, fmt.Errorf("testbed host %s: negative rate", hs.Name)
		}
		seen[hs.Name] = true
		addr, ok := hostAddr(i)
		if !ok {
			return nil, fmt.Errorf("testbed: %d hosts do not fit %s", len(spec.Hosts), Subnet)
		}
		t.hosts = append(t.hosts, &Host{Name: hs.Name, NS: t.prefix + hs.Name, Addr: addr,
			Egress: hs.Egress, Ingress: hs.Ingress, peer: "p" + strconv.Itoa(i)})
	}
	defer func() {
		if err != nil {
			if cerr := t.Close(context.WithoutCancel(ctx)); cerr != nil {
				err = fmt.Errorf("%w (and removing the partial testbed: %v)", err, cerr)
			}
		}
	}()
	if err := t.build(ctx); err != nil {
		return nil, err
	}
	if err := t.CheckIsolation(ctx); err != nil {
		return nil, err
	}
	log.Info("testbed ready", "prefix", t.prefix, "hosts", len(t.hosts), "bridge_ns", t.bridgeNS)
	return t, nil
}

// hostAddr is host i's address.
func hostAddr(i int) (netip.Addr, bool) {
	b := Subnet.Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n += uint32(firstHost + i)
	a := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return a, Subnet.Contains(a) && i < 1<<16
}

// noForwarding turns forwarding off and IPv6 off in a namespace: hosts
// talk IPv4 on one bridge, and nothing routes between interfaces.
var noForwarding = []string{
	"net.ipv4.ip_forward=0",
	"net.ipv6.conf.all.forwarding=0",
	"net.ipv6.conf.all.disable_ipv6=1",
	"net.ipv6.conf.default.disable_ipv6=1",
}

func (t *Testbed) build(ctx context.Context) error {
	br := t.bridgeNS
	steps := [][]string{
		{"ip", "netns", "add", br},
		append([]string{"ip", "netns", "exec", br, "sysctl", "-q", "-w"}, noForwarding...),
		{"ip", "-n", br, "link", "add", bridgeIf, "type", "bridge"},
		{"ip", "-n", br, "link", "set", bridgeIf, "up"},
	}
	for _, h := range t.hosts {
		steps = append(steps,
			[]string{"ip", "netns", "add", h.NS},
			append([]string{"ip", "netns", "exec", h.NS, "sysctl", "-q", "-w"}, noForwarding...),
			// Both ends are made inside namespaces: the machine's own
			// namespace never holds a testbed interface, not even briefly.
			[]string{"ip", "-n", br, "link", "add", h.peer, "type", "veth", "peer", "name", hostIf, "netns", h.NS},
			[]string{"ip", "-n", br, "link", "set", h.peer, "master", bridgeIf, "up"},
			[]string{"ip", "-n", h.NS, "link", "set", "lo", "up"},
			[]string{"ip", "-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.Addr, Subnet.Bits()), "dev", hostIf},
			[]string{"ip", "-n", h.NS, "link", "set", hostIf, "up"},
		)
	}
	for _, s := range steps {
		if _, err := run(ctx, s...); err != nil {
			return err
		}
	}
	for _, h := range t.hosts {
		if err := t.shape(ctx, h, h.Egress, h.Ingress); err != nil {
			return err
		}
	}
	return nil
}

// shape puts a root qdisc on both ends of h's link: tbf at the rate, or a
// plain FIFO when unshaped, so that both directions are always counted.
func (t *Testbed) shape(ctx context.Context, h *Host, egress, ingress int64) error {
	if _, err := run(ctx, qdiscArgs(h.NS, hostIf, egress)...); err != nil {
		return err
	}
	if _, err := run(ctx, qdiscArgs(t.bridgeNS, h.peer, ingress)...); err != nil {
		return err
	}
	h.Egress, h.Ingress = egress, ingress
	return nil
}

// qdiscArgs is the tc command that (re)places dev's root qdisc.
func qdiscArgs(ns, dev string, rate int64) []string {
	base := []string{"tc", "-n", ns, "qdisc", "replace", "dev", dev, "root"}
	if rate <= 0 {
		return append(base, "pfifo", "limit", "10000")
	}
	bytesPerSec := rate / 8
	// A burst of 10 ms at the rate, and never below 128 KiB, so that the
	// 64 KiB segments veth hands over with TSO pass whole; over seconds
	// the rate is exact. 100 ms of queue.
	burst := max(bytesPerSec/100, 128<<10)
	return append(base, "tbf", "rate", fmt.Sprintf("%dbit", rate), "burst", fmt.Sprintf("%db", burst), "latency", "100ms")
}

// SetRates reshapes host name's link.
func (t *Testbed) SetRates(ctx context.Context, name string, egress, ingress int64) error {
	h := t.Host(name)
	if h == nil {
		return fmt.Errorf("testbed: no host %q", name)
	}
	return t.shape(ctx, h, egress, ingress)
}

// Prefix returns the name prefix of everything this testbed made.
func (t *Testbed) Prefix() string { return t.prefix }

// BridgeNS returns the bridge's namespace.
func (t *Testbed) BridgeNS() string { return t.bridgeNS }

// Hosts returns the hosts in the order of the Spec.
func (t *Testbed) Hosts() []*Host { return slices.Clone(t.hosts) }

// Host returns the host called name, or nil.
func (t *Testbed) Host(name string) *Host {
	for _, h := range t.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Command returns a command that runs inside host's namespace.
func (t *Testbed) Command(ctx context.Context, host string, name string, args ...string) (*exec.Cmd, error) {
	h := t.Host(host)
	if h == nil {
		return nil, fmt.Errorf("testbed: no host %q", host)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...), nil
}

// Counter is what one direction of a link carried, from its tc qdisc.
type Counter struct {
	Bytes   int64 `json:"bytes"`
	Packets int64 `json:"packets"`
	Drops   int64 `json:"drops"`
}

// Sub returns c − o.
func (c Counter) Sub(o Counter) Counter {
	return Counter{Bytes: c.Bytes - o.Bytes, Packets: c.Packets - o.Packets, Drops: c.Drops - o.Drops}
}

// LinkCounters are a host link's two directions.
type LinkCounters struct {
	Egress  Counter `json:"egress"`
	Ingress Counter `json:"ingress"`
}

// Sub returns l − o.
func (l LinkCounters) Sub(o LinkCounters) LinkCounters {
	return LinkCounters{Egress: l.Egress.Sub(o.Egress), Ingress: l.Ingress.Sub(o.Ingress)}
}

// Counters reads every link's tc counters (tc -s), by host name.
func (t *Testbed) Counters(ctx context.Context) (map[string]LinkCounters, error) {
	out := make(map[string]LinkCounters, len(t.hosts))
	for _, h := range t.hosts {
		eg, err := qdiscCounter(ctx, h.NS, hostIf)
		if err != nil {
			return nil, err
		}
		in, err := qdiscCounter(ctx, t.bridgeNS, h.peer)
		if err != nil {
			return nil, err
		}
		out[h.Name] = LinkCounters{Egress: eg, Ingress: in}
	}
	return out, nil
}

// qdiscCounter reads the root qdisc's counters of dev.
func qdiscCounter(ctx context.Context, ns, dev string) (Counter, error) {
	b, err := run(ctx, "tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev, "root")
	if err != nil {
		return Counter{}, err
	}
	var qs []struct {
		Root    bool  `json:"root"`
		Bytes   int64 `json:"bytes"`
		Packets int64 `json:"packets"`
		Drops   int64 `json:"drops"`
	}
	if err := json.Unmarshal(b, &qs); err != nil {
		return Counter{}, fmt.Errorf("tc -s -j qdisc show dev %s in %s: %w", dev, ns, err)
	}
	for _, q := range qs {
		if q.Root {
			return Counter{Bytes: q.Bytes, Packets: q.Packets, Drops: q.Drops}, nil
		}
	}
	return Counter{}, fmt.Errorf("no root qdisc on %s in %s", dev, ns)
}

// Close stops every process left in the testbed's namespaces and removes
// the namespaces, and with them every veth and the bridge.
func (t *Testbed) Close(ctx context.Context) error {
	names := []string{}
	for _, h := range t.hosts {
		names = append(names, h.NS)
	}
	names = append(names, t.bridgeNS)
	return removeNamespaces(ctx, names, t.log)
}

// Namespaces lists the network namespaces whose names start with prefix.
func Namespaces(ctx context.Context, prefix string) ([]string, error) {
	if !strings.HasPrefix(prefix, Root) {
		return nil, fmt.Errorf("prefix %q does not start with %q", prefix, Root)
	}
	b, err := run(ctx, "ip", "-j", "netns", "list")
	if err != nil {
		return nil, err
	}
	var list []struct {
		Name string `json:"name"`
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("ip -j netns list: %w", err)
		}
	}
	var out []string
	for _, n := range list {
		if strings.HasPrefix(n.Name, prefix) {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// RootLinks lists the interfaces of the machine's own namespace whose names
// start with prefix: a testbed makes none there, so any is a leftover of
// something else using the prefix.
func RootLinks(ctx context.Context, prefix string) ([]string, error) {
	b, err := run(ctx, "ip", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal(b, &links); err != nil {
		return nil, fmt.Errorf("ip -j link show: %w", err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Name, prefix) {
			out = append(out, l.Name)
		}
	}
	return out, nil
}

// Cleanup removes every namespace whose name starts with prefix (which must
// start with Root), after stopping the processes inside, and any
// interface of the machine's namespace with that prefix. It returns what
// it removed.
func Cleanup(ctx context.Context, prefix string, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nss, err := Namespaces(ctx, prefix)
	if err != nil {
		return nil, err
	}
	links, err := RootLinks(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, l := range links {
		if _, err := run(ctx, "ip", "link", "del", l); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeNamespaces(ctx, nss, log); err != nil {
		errs = append(errs, err)
	}
	return append(nss, links...), errors.Join(errs...)
}

// CleanupStale removes the testbeds of processes that no longer run: the
// pid in "fdxnb-<pid>-" names its maker.
func CleanupStale(ctx context.Context, log *slog.Logger) ([]string, error) {
	nss, err := Namespaces(ctx, Root)
	if err != nil {
		return nil, err
	}
	owners := map[string]bool{}
	for _, ns := range nss {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(ns, Root), "-")
		if !ok || MakerRuns(ns) {
			continue
		}
		owners[Root+pidStr+"-"] = true
	}
	var removed []string
	var errs []error
	for p := range owners {
		r, err := Cleanup(ctx, p, log)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}

// MakerRuns reports whether the process that made the testbed named
// name ("fdxnb-<pid>-…") still runs; a name without a pid counts as
// running, so that nothing of unknown origin is removed.
func MakerRuns(name string) bool {
	pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, Root), "-")
	pid, err := strconv.Atoi(pidStr)
	if !strings.HasPrefix(name, Root) || err != nil || pid <= 0 {
		return true
	}
	err = syscall.Kill(pid, 0)
	return pid == os.Getpid() || err == nil || errors.Is(err, syscall.EPERM)
}

// removeNamespaces stops the processes in each namespace (SIGTERM, then
// SIGKILL after a grace period) and deletes the namespaces.
func removeNamespaces(ctx context.Context, names []string, log *slog.Logger) error {
	var errs []error
	var pids []int
	for _, ns := range names {
		p, err := nsPids(ctx, ns)
		if err != nil {
			continue // already gone
		}
		pids = append(pids, p...)
	}
	if len(pids) > 0 {
		log.Info("stopping processes left in the testbed", "pids", pids)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGTERM)
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && anyAlive(pids) {
			time.Sleep(100 * time.Millisecond)
		}
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil {
				log.Warn("SIGKILL after the grace period", "pid", p)
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		deadline = time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && anyAlive(pids) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Hosts first, the bridge last: deleting a host's namespace deletes its
	// veth pair.
	for _, ns := range names {
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// anyAlive reports whether any pid still exists (zombies of other
// parents count as gone: they hold no namespace resources that matter).
func anyAlive(pids []int) bool {
	for _, p := range pids {
		if syscall.Kill(p, 0) == nil && !zombie(p) {
			return true
		}
	}
	return false
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// nsPids lists the processes inside namespace ns.
func nsPids(ctx context.Context, ns string) ([]int, error) {
	b, err := run(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil && p != os.Getpid() {
			out = append(out, p)
		}
	}
	return out, nil
}

// run runs a command and returns its stdout; the error carries its stderr.
func run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
