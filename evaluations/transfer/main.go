// Command transfer measures how fast the Kafka channel moves one large model
// and one large update (synthetic, -sizes in MB) against a raw
// produce/consume of the same bytes, in 1 MiB records, on the same broker in
// the same run. A model is timed from Publish to its return (one
// transaction: chunks, manifest, commit) and from a fresh client's Model
// call to the decoded model; an update from Submit to the broker's
// acknowledgements and from the aggregator's Next to the verified,
// decoded delivery. The raw baseline produces with acks=all and reads with
// read_committed, as the channel does.
//
// The gRPC rows stream the same model and update in 1 MiB chunks under the
// default 64 MiB message limit: a new client's Model (the server encodes
// the model and its manifest on the first request, so a second client's
// fetch is timed too) and Submit until the aggregator's Next holds the
// verified, decoded update. They are set against the same raw Kafka
// baseline, for scale only.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/cli"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
)

func main() { cli.Main("transfer", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("transfer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "127.0.0.1:9092", "Kafka bootstrap list")
	sizes := fs.String("sizes", "10,100", "model sizes in MB")
	modelParts := fs.Int("model-partitions", 1, "partitions of the model topic the chunks are spread over")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "| size | what | channel s | channel MB/s | raw s | raw MB/s | channel / raw |\n|---|---|---|---|---|---|---|")
	for _, s := range strings.Split(*sizes, ",") {
		mb, err := strconv.Atoi(s)
		if err != nil {
			return cli.Usagef("size %q: %v", s, err)
		}
		if err := measure(ctx, *brokers, mb, *modelParts, stdout); err != nil {
			return fmt.Errorf("%d MB: %w", mb, err)
		}
	}
	return nil
}

func measure(ctx context.Context, brokers string, mb, modelParts int, out io.Writer) error {
	kind := fmt.Sprintf("synthetic:%d", mb)
	net, err := model.New(kind, 784, 10, 1)
	if err != nil {
		return err
	}
	job := fmt.Sprintf("transfer-%d-%s", mb, strconv.FormatInt(time.Now().UnixNano(), 36))
	params := net.Tensors()
	net = nil
	m := &fdxv1.GlobalModel{Job: job, Round: 1, Params: params, NumRounds: 5}
	size := proto.Size(m)
	o := kafkachan.Options{Brokers: brokers, Job: job}
	srv, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{Options: o,
		TopicOptions: kafkachan.TopicOptions{UpdatePartitions: 1, ModelPartitions: modelParts, MaxMessageBytes: size + 1<<20}})
	if err != nil {
		return err
	}
	defer srv.Close()
	start := time.Now()
	if err := srv.Publish(ctx, m); err != nil {
		return err
	}
	publish := time.Since(start)
	c, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: o})
	if err != nil {
		return err
	}
	defer c.Close()
	start = time.Now()
	if got, err := c.Model(ctx, 1); err != nil || len(got.GetParams()) != len(params) {
		return fmt.Errorf("model: %v", err)
	}
	fetch := time.Since(start)
	u := &fdxv1.Update{Job: job, ClientId: "c1", BaseRound: 1, NumExamples: 1, Params: params}
	start = time.Now()
	if err := c.Submit(ctx, u); err != nil {
		return err
	}
	submit := time.Since(start)
	d, err := srv.Next(ctx)
	if err != nil || d.Update == nil || d.Rejection != nil {
		return fmt.Errorf("next: %v %v %v", err, d.Err, d.Rejection)
	}
	update := time.Since(start)

	rawProduce, rawEndToEnd, rawCold, err := raw(ctx, brokers, job+".raw", size)
	if err != nil {
		return err
	}
	row := func(what string, ch, rw time.Duration) {
		mbs := func(d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }
		fmt.Fprintf(out, "| %d MB | %s | %.2f | %.0f | %.2f | %.0f | %.2f |\n", mb, what, ch.Seconds(), mbs(ch), rw.Seconds(), mbs(rw), rw.Seconds()/ch.Seconds())
	}
	row("model publish (one transaction) / raw produce", publish, rawProduce)
	row("model fetch (new client) / raw cold read", fetch, rawCold)
	row("update submit / raw produce", submit, rawProduce)
	row("update submit to aggregator's delivery / raw produce to consume", update, rawEndToEnd)
	g, err := grpcTransfer(ctx, m, u)
	if err != nil {
		return fmt.Errorf("grpc: %w", err)
	}
	row("grpc model fetch, streamed (new client) / raw Kafka cold read", g.fetch, rawCold)
	row("grpc model fetch, streamed (2nd client, model encoded) / raw Kafka cold read", g.fetch2, rawCold)
	row("grpc update submit, streamed, to aggregator's delivery / raw Kafka produce to consume", g.update, rawEndToEnd)
	return nil
}

// grpcTimes are the gRPC channel's times for one model and one update.
type grpcTimes struct{ fetch, fetch2, update time.Duration }

// grpcTransfer serves m on a loopback gRPC server with the default message
// limit and times two fetches and the submission of u.
func grpcTransfer(ctx context.Context, m *fdxv1.GlobalModel, u *fdxv1.Update) (grpcTimes, error) {
	var t grpcTimes
	srv, err := grpcchan.NewServer(grpcchan.ServerOptions{Addr: "127.0.0.1:0", Job: m.GetJob()})
	if err != nil {
		return t, err
	}
	defer srv.Close()
	if err := srv.Publish(ctx, m); err != nil {
		return t, err
	}
	for _, d := range []*time.Duration{&t.fetch, &t.fetch2} {
		c, err := grpcchan.Dial(ctx, grpcchan.ClientOptions{Addr: srv.Addr(), Job: m.GetJob()})
		if err != nil {
			return t, err
		}
		start := time.Now()
		got, err := c.Model(ctx, 1)
		*d = time.Since(start)
		c.Close()
		if err != nil || len(got.GetParams()) != len(m.GetParams()) {
			return t, fmt.Errorf("model: %v", err)
		}
	}
	c, err := grpcchan.Dial(ctx, grpcchan.ClientOptions{Addr: srv.Addr(), Job: m.GetJob()})
	if err != nil {
		return t, err
	}
	defer c.Close()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- c.Submit(ctx, u) }()
	d, err := srv.Next(ctx)
	if err != nil || d.Update == nil || d.Rejection != nil {
		return t, fmt.Errorf("next: %v %v %v", err, d.Err, d.Rejection)
	}
	t.update = time.Since(start)
	d.Reply(nil)
	return t, <-errc
}

// raw produces size bytes in 1 MiB records to a new topic while a live
// consumer reads them (produce: until every record is acknowledged;
// endToEnd: until the consumer holds the last byte), then reads them again
// with a new consumer (cold). Every consumer's connection is up before its
// clock starts, as the channel's are.
func raw(ctx context.Context, brokers, topic string, size int) (produce, endToEnd, cold time.Duration, err error) {
	seeds := strings.Split(brokers, ",")
	p, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0), kgo.ProducerBatchMaxBytes(2<<20))
	if err != nil {
		return 0, 0, 0, err
	}
	defer p.Close()
	res, err := kadm.NewClient(p).CreateTopic(ctx, 1, -1, map[string]*string{"max.message.bytes": kadm.StringPtr(strconv.Itoa(2 << 20))}, topic)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("create %s: %w", topic, err)
	}
	live, err := consumer(ctx, seeds, topic)
	if err != nil {
		return 0, 0, 0, err
	}
	defer live.Close()
	buf := make([]byte, size)
	const chunk = 1 << 20
	n := (size + chunk - 1) / chunk
	recs := make([]*kgo.Record, n)
	for i := range n {
		recs[i] = &kgo.Record{Value: buf[i*chunk : min(size, (i+1)*chunk)]}
	}
	consumed := make(chan error, 1)
	start := time.Now()
	go func() { consumed <- readAll(ctx, live, size) }()
	if err := p.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return 0, 0, 0, err
	}
	produce = time.Since(start)
	if err := <-consumed; err != nil {
		return 0, 0, 0, err
	}
	endToEnd = time.Since(start)
	c, err := consumer(ctx, seeds, topic)
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	start = time.Now()
	if err := readAll(ctx, c, size); err != nil {
		return 0, 0, 0, err
	}
	return produce, endToEnd, time.Since(start), nil
}

// consumer returns a read_committed consumer of topic's partition 0 from
// the beginning, connected.
func consumer(ctx context.Context, seeds []string, topic string) (*kgo.Client, error) {
	c, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(50*time.Millisecond), kgo.FetchMaxBytes(128<<20), kgo.FetchMaxPartitionBytes(64<<20), kgo.BrokerMaxReadBytes(129<<20),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		return nil, err
	}
	// Connect, and learn the partition's leader, before the clock starts.
	if _, err := kadm.NewClient(c).ListEndOffsets(ctx, topic); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readAll polls c until it has read size bytes.
func readAll(ctx context.Context, c *kgo.Client, size int) error {
	for got := 0; got < size; {
		fs := c.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fs.Err(); err != nil {
			return err
		}
		fs.EachRecord(func(r *kgo.Record) { got += len(r.Value) })
	}
	return nil
}
