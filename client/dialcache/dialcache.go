// Package dialcache keeps dialed channel clients warm between invocations of
// a function instance. A cold invocation pays a dial (two Kafka clients
// and their broker connections, or a gRPC connection and a health check);
// a warm one should pay only the transport, as a long-running client does.
//
// A client is leased exclusively: Get hands an idle client of the key to one
// caller at a time, or dials a new one, so concurrent invocations (a Cloud
// Function with concurrency > 1) never share a client's reader position or
// its traffic counters. Release returns it, or evicts it when the
// invocation's transport failed. Idle clients are checked before reuse,
// evicted after an idle timeout, and bounded in number; evicted clients are
// closed on a goroutine of their own, never on the request path.
package dialcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// Key identifies what a client was dialed for: clients of equal keys are
// interchangeable.
type Key struct {
	// Channel is "kafka" or "grpc".
	Channel string
	// Broker is the bootstrap list or the aggregator's address.
	Broker string
	Job    string
	// Security is a digest of every setting that decides who the client
	// is to the broker (SASL/TLS properties, tokens, client certificates);
	// see Digest.
	Security string
}

func (k Key) String() string { return k.Channel + "://" + k.Broker + "/" + k.Job }

// Digest returns a stable digest of security settings, so that a Key can
// tell credentials apart without keeping them in clear. The map's order
// does not matter; extra values (a token, a certificate's fingerprint) are
// appended in order.
func Digest(props map[string]string, extra ...string) string {
	h := sha256.New()
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(props[k]), props[k])
	}
	for _, e := range extra {
		fmt.Fprintf(h, "|%d:%s", len(e), e)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// HealthChecker is implemented by clients that can tell, cheaply, whether
// they may be reused (kafkachan.Client, grpcchan.Client). Clients without
// it are reused until an invocation reports an error.
type HealthChecker interface {
	Healthy(ctx context.Context) error
}

// Options configure a Cache.
type Options struct {
	// MaxIdle bounds the idle clients kept, over all keys (default 4). A
	// function instance serves few jobs; every cached Kafka client holds
	// two Kafka clients and their connections.
	MaxIdle int
	// IdleTimeout evicts a client unused for this long (default 5 min,
	// below the 9-10 min after which brokers and load balancers drop idle
	// connections, so that a reused client rarely finds its socket gone).
	IdleTimeout time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
	Log *slog.Logger
}

// Cache is a bounded cache of dialed clients. It is safe for concurrent use.
type Cache struct {
	opt Options

	mu     sync.Mutex
	idle   []*entry // least recently released first
	closed bool

	closing sync.WaitGroup // evicted clients being closed
	stop    chan struct{}
	swept   sync.WaitGroup
}

type entry struct {
	key    Key
	client channel.Client
	since  time.Time
}

// New returns a Cache. Its sweeper goroutine evicts idle clients until
// Close.
func New(opt Options) *Cache {
	if opt.MaxIdle <= 0 {
		opt.MaxIdle = 4
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 5 * time.Minute
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{opt: opt, stop: make(chan struct{})}
	c.swept.Add(1)
	go c.sweeper()
	return c
}

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("dialcache: closed")

// Get returns a client for key, leased to the caller until it calls
// release: an idle, healthy one when there is one (warm), else one that
// dial makes (cold). release(err) gives the client back; a non-nil err that
// says the transport failed evicts and closes it instead (see Evicts).
// release must be called exactly once; later calls do nothing. warm
// reports whether the client was reused.
func (c *Cache) Get(ctx context.Context, key Key, dial func(context.Context) (channel.Client, error)) (cl channel.Client, release func(err error), warm bool, err error) {
	for {
		e, err := c.takeIdle(key)
		if err != nil {
			return nil, nil, false, err
		}
		if e == nil {
			break
		}
		if hc, ok := e.client.(HealthChecker); ok {
			if herr := hc.Healthy(ctx); herr != nil {
				c.opt.Log.Info("cached client unhealthy; evicting it", "key", key.String(), "err", herr)
				c.closeAsync(e.client)
				continue
			}
		}
		return e.client, c.releaser(key, e.client), true, nil
	}
	cl, err = dial(ctx)
	if err != nil {
		return nil, nil, false, err
	}
	return cl, c.releaser(key, cl), false, nil
}

// takeIdle removes and returns the most recently released idle client of
// key (the warmest), after evicting expired ones.
func (c *Cache) takeIdle(key Key) (*entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.expireLocked()
	for i := len(c.idle) - 1; i >= 0; i-- {
		if e := c.idle[i]; e.key == key {
			c.idle = slices.Delete(c.idle, i, i+1)
			return e, nil
		}
	}
	return nil, nil
}

func (c *Cache) releaser(key Key, cl channel.Client) func(error) {
	var once sync.Once
	return func(err error) {
		once.Do(func() { c.put(key, cl, err) })
	}
}

// Evicts reports whether an invocation's error condemns its client. The
// aggregator's verdicts (a rejected update, a round already closed) travel
// over a working connection and keep it; anything else, including a
// timeout, may leave the client mid-request or on a dead connection.
func Evicts(err error) bool {
	return err != nil && !errors.Is(err, channel.ErrRejected) && !errors.Is(err, channel.ErrRoundClosed)
}

func (c *Cache) put(key Key, cl channel.Client, err error) {
	if Evicts(err) {
		c.opt.Log.Info("evicting client after a failed invocation", "key", key.String(), "err", err)
		c.closeAsync(cl)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.closeAsync(cl)
		return
	}
	c.idle = append(c.idle, &entry{key: key, client: cl, since: c.opt.Now()})
	for len(c.idle) > c.opt.MaxIdle {
		c.closeAsync(c.idle[0].client)
		c.idle = slices.Delete(c.idle, 0, 1)
	}
}

// expireLocked evicts clients idle for IdleTimeout or longer.
func (c *Cache) expireLocked() {
	now := c.opt.Now()
	c.idle = slices.DeleteFunc(c.idle, func(e *entry) bool {
		if now.Sub(e.since) < c.opt.IdleTimeout {
			return false
		}
		c.closeAsync(e.client)
		return true
	})
}

// closeAsync closes cl off the caller's path: closing a Kafka client waits
// for its poller and its in-flight fetch (about 100 ms).
func (c *Cache) closeAsync(cl channel.Client) {
	c.closing.Add(1)
	go func() {
		defer c.closing.Done()
		if err := cl.Close(); err != nil {
			c.opt.Log.Warn("closing evicted client", "err", err)
		}
	}()
}

func (c *Cache) sweeper() {
	defer c.swept.Done()
	t := time.NewTicker(max(c.opt.IdleTimeout/2, time.Second))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.mu.Lock()
			c.expireLocked()
			c.mu.Unlock()
		}
	}
}

// Len is the number of idle clients held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idle)
}

// Close closes every idle client and waits for all evicted ones to close.
// Leased clients are closed when released.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, e := range c.idle {
		c.closeAsync(e.client)
	}
	c.idle = nil
	c.mu.Unlock()
	close(c.stop)
	c.swept.Wait()
	c.closing.Wait()
	return nil
}
