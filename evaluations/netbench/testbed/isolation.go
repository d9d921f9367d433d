package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// outside are addresses no testbed host may have a route to. Asking the
// kernel for a route (ip route get) sends nothing.
var outside = []string{
	"8.8.8.8",     // a public address
	"192.0.2.1",   // TEST-NET-1
	"10.0.0.1",    // private ranges
	"172.16.0.1",  //
	"192.168.0.1", //
	"169.254.169.254",
	"198.20.0.1", // just past 198.18.0.0/15
}

var loopback = netip.MustParsePrefix("127.0.0.0/8")

// IsolationError lists every way in which a testbed could reach beyond
// itself.
type IsolationError struct{ Violations []string }

func (e *IsolationError) Error() string {
	return "the testbed is not isolated, refusing to run: " + strings.Join(e.Violations, "; ")
}

// CheckIsolation verifies that no namespace of the testbed can send a
// packet anywhere but to another host of the testbed: the machine's own
// namespace holds none of its interfaces; each host has only lo and its
// veth, addresses from Subnet, no default route and no route beyond
// Subnet (the kernel finds none to a set of outside addresses), and
// forwarding off; the bridge has no address, and its ports are the hosts'
// links only. It returns an *IsolationError listing every violation.
func (t *Testbed) CheckIsolation(ctx context.Context) error {
	var v []string
	add := func(format string, a ...any) { v = append(v, fmt.Sprintf(format, a...)) }
	if links, err := RootLinks(ctx, t.prefix); err != nil {
		return err
	} else if len(links) > 0 {
		add("the machine's namespace holds testbed interfaces %s", strings.Join(links, ", "))
	}
	for _, h := range t.hosts {
		if err := checkNamespace(ctx, h.NS, []string{"lo", hostIf}, false, add); err != nil {
			return err
		}
		for _, dst := range outside {
			if out, err := run(ctx, "ip", "-n", h.NS, "route", "get", dst); err == nil {
				add("%s has a route to %s: %s", h.NS, dst, strings.Join(strings.Fields(string(out)), " "))
			}
		}
	}
	want := []string{"lo", bridgeIf}
	for _, h := range t.hosts {
		want = append(want, h.peer)
	}
	if err := checkNamespace(ctx, t.bridgeNS, want, true, add); err != nil {
		return err
	}
	if len(v) > 0 {
		return &IsolationError{Violations: v}
	}
	return nil
}

// checkNamespace checks one namespace's interfaces, addresses, routes and
// forwarding, reporting violations through add. bridge marks the bridge's
// namespace: its ports must belong to br0 and it has no address but
// loopback.
func checkNamespace(ctx context.Context, ns string, wantLinks []string, bridge bool, add func(string, ...any)) error {
	b, err := run(ctx, "ip", "-n", ns, "-j", "link", "show")
	if err != nil {
		return err
	}
	var links []struct {
		Name   string `json:"ifname"`
		Master string `json:"master"`
	}
	if err := json.Unmarshal(b, &links); err != nil {
		return fmt.Errorf("ip -j link show in %s: %w", ns, err)
	}
	for _, l := range links {
		if !slices.Contains(wantLinks, l.Name) {
			add("%s has an interface %s that the testbed did not make", ns, l.Name)
			continue
		}
		if bridge && l.Name != "lo" && l.Name != bridgeIf && l.Master != bridgeIf {
			add("%s: %s is not a port of %s", ns, l.Name, bridgeIf)
		}
	}

	b, err = run(ctx, "ip", "-n", ns, "-j", "addr", "show")
	if err != nil {
		return err
	}
	var addrs []struct {
		Name  string `json:"ifname"`
		Infos []struct {
			Family string `json:"family"`
			Local  string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(b, &addrs); err != nil {
		return fmt.Errorf("ip -j addr show in %s: %w", ns, err)
	}
	for _, l := range addrs {
		for _, a := range l.Infos {
			ip, err := netip.ParseAddr(a.Local)
			switch {
			case err != nil:
				add("%s: %s has an address %q that does not parse", ns, l.Name, a.Local)
			case l.Name == "lo" && ip.IsLoopback():
			case bridge:
				add("%s: %s has address %s (the bridge namespace needs none)", ns, l.Name, ip)
			case !ip.Is4() || !Subnet.Contains(ip):
				add("%s: %s has address %s outside %s", ns, l.Name, ip, Subnet)
			}
		}
	}

	for _, fam := range []string{"-4", "-6"} {
		b, err = run(ctx, "ip", "-n", ns, fam, "-j", "route", "show", "table", "all")
		if err != nil {
			return err
		}
		var routes []struct {
			Type    string `json:"type"`
			Dst     string `json:"dst"`
			Gateway string `json:"gateway"`
			Dev     string `json:"dev"`
			Table   string `json:"table"`
		}
		if len(strings.TrimSpace(string(b))) > 0 {
			if err := json.Unmarshal(b, &routes); err != nil {
				return fmt.Errorf("ip %s -j route show table all in %s: %w", fam, ns, err)
			}
		}
		for _, r := range routes {
			desc := strings.Join(strings.Fields(fmt.Sprintf("%s %s dev %s table %s", r.Type, r.Dst, r.Dev, r.Table)), " ")
			if r.Dst == "default" {
				add("%s has a default route (%s)", ns, desc)
				continue
			}
			if r.Gateway != "" {
				add("%s has a route via gateway %s (%s)", ns, r.Gateway, desc)
				continue
			}
			p, err := parseDst(r.Dst)
			if err != nil {
				add("%s has a route %q that does not parse", ns, r.Dst)
				continue
			}
			if p.Bits() == 0 {
				add("%s has a default route (%s)", ns, desc)
				continue
			}
			inside := p.Addr().Is4() && (within(p, Subnet) || within(p, loopback))
			if !inside && !(r.Dev == "lo" && p.Addr().IsLoopback()) {
				add("%s has a route beyond %s (%s)", ns, Subnet, desc)
			}
		}
	}

	for _, key := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		b, err = run(ctx, "ip", "netns", "exec", ns, "cat", key)
		if err != nil {
			if fam := strings.Contains(key, "ipv6"); fam {
				continue // no IPv6 in this kernel
			}
			return err
		}
		if s := strings.TrimSpace(string(b)); s != "0" {
			add("%s forwards packets (%s = %s)", ns, key, s)
		}
	}
	return nil
}

// parseDst reads a route's destination: a prefix or a single address.
func parseDst(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// within reports whether p lies inside outer.
func within(p, outer netip.Prefix) bool {
	return p.Bits() >= outer.Bits() && outer.Contains(p.Addr())
}
