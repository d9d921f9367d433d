// Package layers holds the test that keeps FDxKafka's dependencies pointing
// one way: function → participant → channels → shared, and aggregator →
// coordinator → strategy → validate → shared. Neither binary links the
// other's packages, and the shared layer links neither.
package layers

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/fdxkafka/fdxkafka/"

// deps lists the packages pattern links (not its tests'), as go list -deps.
func deps(t *testing.T, pattern string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pattern).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", pattern, err, msg)
	}
	return strings.Fields(string(out))
}

func TestDependenciesPointDown(t *testing.T) {
	for _, tc := range []struct {
		pattern   string
		forbidden []string
	}{
		// The Cloud Function links no aggregator code: not its strategies,
		// not its metrics, not cloud.google.com/go/logging.
		{mod + "function/...", []string{mod + "aggregator", mod + "evaluations", "cloud.google.com/go/logging"}},
		// The aggregator links no function code.
		{mod + "aggregator/...", []string{mod + "function", mod + "evaluations"}},
		// The shared layer and the leaf rules link neither binary's code.
		{mod + "shared/...", []string{mod + "function", mod + "aggregator", mod + "evaluations"}},
		{mod + "shared/rules", []string{mod + "shared/channel", mod + "shared/kafkachan", mod + "shared/grpcchan", mod + "shared/participant"}},
		// Strategies and validation know nothing of transports or rounds.
		// A strategy folds what the validator checked (validate.Values,
		// read in place), so strategy sits above validate, never below.
		{mod + "aggregator/strategy", []string{mod + "aggregator/coordinator", mod + "shared/channel"}},
		{mod + "aggregator/validate", []string{mod + "aggregator/strategy", mod + "aggregator/coordinator", mod + "shared/channel"}},
	} {
		for _, d := range deps(t, tc.pattern) {
			for _, f := range tc.forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s links %s", tc.pattern, d)
				}
			}
		}
	}
}

// The checker must be able to fail: the aggregator's main package does
// link its coordinator, so looking for it finds it.
func TestDepsSeesWhatIsLinked(t *testing.T) {
	found := false
	for _, d := range deps(t, mod+"aggregator") {
		found = found || d == mod+"aggregator/coordinator"
	}
	if !found {
		t.Fatal("go list -deps of the aggregator does not list its coordinator: the layer check would pass vacuously")
	}
}
