package kafkachan

import "github.com/twmb/franz-go/pkg/kgo"

// ClientOpts returns the franz-go options of a client that reaches o's
// brokers as the channel's own clients do: o's properties (security,
// client id, tuning), its logger and the key partitioner the channel
// writes updates with, then extra. Tools that write or read a job's
// topics directly (the fleet generator, the evaluations) build their
// clients from it, so that the same properties file serves them and their
// records land where the channel's would.
func (o Options) ClientOpts(extra ...kgo.Opt) ([]kgo.Opt, error) {
	return o.clientOpts(extra...)
}
