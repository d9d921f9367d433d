package function

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/fdxkafka/fdxkafka/client/participant"
)

// ErrBrokerNotAllowed is the refusal of a request that names a broker or
// aggregator this deployment's credentials may not be sent to.
var ErrBrokerNotAllowed = errors.New("broker not allowed")

// brokerPolicy decides which addresses a request may name. A deployment
// holding credentials (participant.Transport.HoldsCredentials) would hand
// them to whoever listens at the address a caller puts in "broker": the
// bearer token in the first gRPC call, the SASL login or client
// certificate in the Kafka handshake. So it dials only the addresses it
// was deployed for. Without credentials there is nothing to hand over and
// any address goes, as the request contract always said.
type brokerPolicy struct {
	guard   bool
	allowed map[string]bool // canonical host:port
}

// newBrokerPolicy allows the entries of the default broker list and of
// extra when tr holds credentials. Such a deployment must allow at least
// one address, and every address must be a host:port.
func newBrokerPolicy(tr participant.Transport, defaultBroker string, extra []string) (brokerPolicy, error) {
	p := brokerPolicy{guard: tr.HoldsCredentials(), allowed: map[string]bool{}}
	for _, list := range append([]string{defaultBroker}, extra...) {
		for _, a := range strings.Split(list, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			c, err := canonicalAddr(a)
			if err != nil {
				if !p.guard && list == defaultBroker {
					// Without credentials FDX_BROKER is only a default,
					// checked by the dial as before.
					continue
				}
				return p, fmt.Errorf("broker %q: %w", a, err)
			}
			p.allowed[c] = true
		}
	}
	if p.guard && len(p.allowed) == 0 {
		return p, errors.New("credentials are configured (client token, Kafka SASL/TLS settings or a gRPC client certificate) " +
			"but no broker to send them to: set FDX_BROKER or FDX_ALLOWED_BROKERS (comma-separated host:port)")
	}
	return p, nil
}

// check refuses a broker list with an address outside the allow-list.
func (p brokerPolicy) check(broker string) error {
	if !p.guard {
		return nil
	}
	for _, a := range strings.Split(broker, ",") {
		c, err := canonicalAddr(strings.TrimSpace(a))
		if err != nil || !p.allowed[c] {
			return fmt.Errorf("%w: %q: this function holds credentials and sends them only to the brokers it was deployed for "+
				"(FDX_BROKER, FDX_ALLOWED_BROKERS); leave \"broker\" out or name one of those", ErrBrokerNotAllowed, strings.TrimSpace(a))
		}
	}
	return nil
}

// canonicalAddr returns a as host:port with the host in lower case (an IP
// address in its canonical form), so that spellings of one address
// compare equal. Anything but a plain host and a decimal port (a URL, a
// gRPC target scheme, user info, a path) is an error: an allow-list
// compares addresses, not strings a dialer might read differently.
func canonicalAddr(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", fmt.Errorf("want host:port: %w", err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", fmt.Errorf("port %q: want 1 to 65535", port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("host %q: no zones", host)
		}
		return net.JoinHostPort(ip.Unmap().String(), port), nil
	}
	host = strings.ToLower(host)
	if host == "" || len(host) > 253 {
		return "", fmt.Errorf("host %q: want a host name or an IP address", host)
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return "", fmt.Errorf("host %q: want a host name or an IP address", host)
		}
	}
	return net.JoinHostPort(host, port), nil
}
