// Package layers holds the test that keeps FDxKafka's dependencies pointing
// one way: function → client (participant) → channels → shared, and aggregator →
// coordinator → round, strategy → validate, accumulator → shared. Neither
// binary links the other's packages (the aggregator not even the client
// side: the demo binary adds it), the shared layer links neither, and the
// round core (coordinator, round, strategy, validate, accumulator) links no
// concrete transport: it sees a channel only through shared/channel.
package layers

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/fdxkafka/fdxkafka/"

// roundCore is the code that runs a round whatever the channel.
var roundCore = []string{mod + "aggregator/coordinator", mod + "aggregator/round", mod + "aggregator/strategy/...", mod + "aggregator/validate", mod + "aggregator/accumulator"}

// transports are the concrete channels and their client libraries.
var transports = []string{mod + "shared/kafkachan", mod + "shared/grpcchan", mod + "client", "github.com/twmb/franz-go"}

// rule forbids the packages matching pattern to link any of forbidden (a
// package or the tree below it). With tests, what the packages' tests
// link counts too (go list -test -deps).
type rule struct {
	name      string
	patterns  []string
	forbidden []string
	tests     bool
}

var rules = []rule{
	// The Cloud Function links no aggregator code: not its strategies,
	// not its metrics, not cloud.google.com/go/logging.
	{"function is not aggregator", []string{mod + "function/..."}, []string{mod + "aggregator", mod + "evaluations", "cloud.google.com/go/logging"}, true},
	// The aggregator links no function code. Its job tests do: they
	// drive the real function handler against a real aggregator.
	{"aggregator is not function", []string{mod + "aggregator/..."}, []string{mod + "function", mod + "evaluations"}, false},
	// Nor does it link the client side: the clients the demo runs in its
	// process are the demo binary's, not the aggregator's.
	{"aggregator is not client", []string{mod + "aggregator/..."}, []string{mod + "client", mod + "demo"}, false},
	// The shared layer links neither binary's code. The Kafka channel's
	// tests fold streamed updates with the real strategies.
	{"shared is below both binaries", []string{mod + "shared/..."}, []string{mod + "function", mod + "aggregator", mod + "evaluations"}, false},
	{"rules is a leaf", []string{mod + "shared/rules"}, []string{mod + "shared/channel", mod + "shared/kafkachan", mod + "shared/grpcchan", mod + "client"}, true},
	// The client side (one client's round, the function's channel cache)
	// sits on the shared layer and knows no aggregator code; the shared
	// layer does not know the client side.
	{"client is not aggregator", []string{mod + "client/..."}, []string{mod + "aggregator", mod + "function", mod + "evaluations"}, true},
	{"shared is below the client side", []string{mod + "shared/..."}, []string{mod + "client"}, false},
	// The round core runs on any channel, so it cannot know one; its tests
	// run it on the channel interfaces, not on Kafka or gRPC.
	{"round core links no transport", roundCore, transports, true},
	// Scale-out runs on the small transport interfaces it defines; its
	// tests run it on Kafka.
	{"scale-out links no transport", []string{mod + "aggregator/scaleout"}, transports, false},
	// What every mode shares about a round sits below each mode: the
	// single aggregator and scale-out both build on it, never it on them.
	// It folds through hooks, so it knows no strategy either.
	{"round is below the modes", []string{mod + "aggregator/round"}, []string{mod + "aggregator/coordinator", mod + "aggregator/scaleout", mod + "aggregator/job", mod + "aggregator/strategy"}, true},
	// Strategies and validation know nothing of rounds or channels. A
	// strategy folds what the validator checked (validate.Values, read in
	// place), so strategy sits above validate, never below; the
	// accumulator sums what either gives it.
	{"strategy is below the round loop", []string{mod + "aggregator/strategy/..."}, []string{mod + "aggregator/coordinator", mod + "shared/channel"}, true},
	// Validate's external tests fold what it passes with the strategies,
	// to check that it folds bit-identically to the decoded update.
	{"validate is below strategy", []string{mod + "aggregator/validate"}, []string{mod + "aggregator/strategy", mod + "aggregator/accumulator", mod + "aggregator/coordinator", mod + "shared/channel"}, false},
	{"accumulator is below strategy", []string{mod + "aggregator/accumulator"}, []string{mod + "aggregator/strategy", mod + "aggregator/coordinator", mod + "shared/channel"}, true},
}

// deps lists the packages patterns link, with their tests' if tests.
func deps(t *testing.T, patterns []string, tests bool) []string {
	t.Helper()
	args := []string{"list", "-deps"}
	if tests {
		args = append(args, "-test")
	}
	out, err := exec.Command("go", append(args, patterns...)...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go %s: %v\n%s", strings.Join(append(args, patterns...), " "), err, msg)
	}
	return strings.Fields(string(out))
}

// violations returns the packages of deps that r forbids. A test binary
// is listed as "pkg.test" and a package compiled for its tests as
// "pkg [pkg.test]": both are the package.
func (r rule) violations(deps []string) []string {
	var bad []string
	for _, d := range deps {
		if strings.HasPrefix(d, "[") {
			continue // the second half of "pkg [pkg.test]"
		}
		d = strings.TrimSuffix(d, ".test")
		for _, f := range r.forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				bad = append(bad, d)
			}
		}
	}
	return bad
}

func TestDependenciesPointDown(t *testing.T) {
	for _, r := range rules {
		for _, d := range r.violations(deps(t, r.patterns, r.tests)) {
			t.Errorf("%s: %v links %s", r.name, r.patterns, d)
		}
	}
}

// TestRulesCanFail plants, for every rule, one forbidden package among
// what the rule's packages really link, and checks that the rule finds
// it: a rule that matched nothing would pass vacuously.
func TestRulesCanFail(t *testing.T) {
	for _, r := range rules {
		real := deps(t, r.patterns, r.tests)
		if len(real) == 0 {
			t.Errorf("%s: %v link nothing: the patterns name no package", r.name, r.patterns)
			continue
		}
		for _, f := range r.forbidden {
			planted := append(append([]string(nil), real...), f+"/planted")
			if got := r.violations(planted); len(got) != 1 || got[0] != f+"/planted" {
				t.Errorf("%s: with %s/planted among the dependencies, violations %v", r.name, f, got)
			}
		}
	}
}

// The lister must see what is linked: the aggregator's main package links
// its coordinator, the demo the client side, and the Kafka channel's tests
// link the real strategies.
func TestDepsSeesWhatIsLinked(t *testing.T) {
	for _, tc := range []struct {
		pattern, want string
		tests         bool
	}{
		{mod + "aggregator", mod + "aggregator/coordinator", false},
		{mod + "demo", mod + "client/participant", false},
		{mod + "shared/kafkachan", mod + "aggregator/strategy", true},
	} {
		found := false
		for _, d := range deps(t, []string{tc.pattern}, tc.tests) {
			found = found || d == tc.want
		}
		if !found {
			t.Errorf("go list -deps (tests %v) of %s does not list %s: the layer check would pass vacuously", tc.tests, tc.pattern, tc.want)
		}
	}
}
