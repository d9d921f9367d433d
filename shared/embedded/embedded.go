// Package embedded runs an in-process Kafka broker (franz-go's kfake) so that
// a whole federation runs on one machine with nothing installed, and tests
// need no external service. It is in memory unless given a data directory:
// fit for trials and tests, not for durable jobs.
package embedded

import (
	"fmt"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Broker is a running embedded broker.
type Broker struct {
	c    *kfake.Cluster
	addr string
}

// Options configure the broker.
type Options struct {
	// Addr is host:port to listen on; port 0 picks a free port. The host
	// must be a loopback or local address (kfake binds 127.0.0.1 for ports
	// it picks itself).
	Addr string
	// DataDir persists the log across restarts when set.
	DataDir string
	// Extra kfake options (SASL users, TLS) for tests of secured setups.
	Extra []kfake.Opt
}

// Start starts a single-broker cluster.
func Start(o Options) (*Broker, error) {
	port := 0
	if o.Addr != "" {
		_, p, err := net.SplitHostPort(o.Addr)
		if err != nil {
			return nil, fmt.Errorf("embedded broker address %q: %w", o.Addr, err)
		}
		port, err = strconv.Atoi(p)
		if err != nil || port < 0 || port > 65535 {
			return nil, fmt.Errorf("embedded broker address %q: bad port", o.Addr)
		}
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(1),
		kfake.AllowAutoTopicCreation(),
	}
	if port != 0 {
		opts = append(opts, kfake.Ports(port))
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir))
	}
	opts = append(opts, o.Extra...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded broker on %q: %w", o.Addr, err)
	}
	addrs := c.ListenAddrs()
	if len(addrs) == 0 {
		c.Close()
		return nil, fmt.Errorf("embedded broker: no listen address")
	}
	return &Broker{c: c, addr: addrs[0]}, nil
}

// Addr is the bootstrap address clients dial.
func (b *Broker) Addr() string { return b.addr }

// Cluster exposes kfake for tests that inject faults.
func (b *Broker) Cluster() *kfake.Cluster { return b.c }

// Close stops the broker; clients see it as down.
func (b *Broker) Close() { b.c.Close() }
