package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestCode(t *testing.T) {
	live := context.Background()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		err  error
		ctx  context.Context
		want int
	}{
		{"success", nil, live, ExitOK},
		{"help", flag.ErrHelp, live, ExitOK},
		{"usage", Usagef("--x: bad"), live, ExitUsage},
		{"wrapped usage", errors.Join(errors.New("ctx"), Usagef("bad")), live, ExitUsage},
		{"failure", errors.New("boom"), live, ExitFailure},
		{"cancelled without a signal", context.Canceled, live, ExitFailure},
		{"stopped by signal", context.Canceled, stopped, ExitOK},
		{"exit code", fmt.Errorf("publish: %w", &ExitError{Code: ExitOutcomeUnknown, Err: errors.New("commit timed out")}), live, ExitOutcomeUnknown},
		{"exit code wins over a signal", &ExitError{Code: ExitOutcomeUnknown, Err: context.Canceled}, stopped, ExitOutcomeUnknown},
	} {
		var buf bytes.Buffer
		if got := Code("cmd", tc.err, tc.ctx, &buf); got != tc.want {
			t.Errorf("%s: Code = %d, want %d (printed %q)", tc.name, got, tc.want, buf.String())
		}
	}
}

func TestParse(t *testing.T) {
	newFS := func() *flag.FlagSet {
		fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
		fs.SetOutput(new(bytes.Buffer))
		fs.Int("n", 1, "a number")
		return fs
	}
	if err := Parse(newFS(), []string{"-n", "3"}); err != nil {
		t.Errorf("Parse(valid) = %v", err)
	}
	var usage *UsageError
	if err := Parse(newFS(), []string{"-n", "x"}); !errors.As(err, &usage) {
		t.Errorf("Parse(bad value) = %v, want a UsageError", err)
	}
	if err := Parse(newFS(), []string{"-nope"}); !errors.As(err, &usage) {
		t.Errorf("Parse(unknown flag) = %v, want a UsageError", err)
	}
	if err := Parse(newFS(), []string{"stray"}); !errors.As(err, &usage) {
		t.Errorf("Parse(positional) = %v, want a UsageError", err)
	}
	if err := Parse(newFS(), []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("Parse(-h) = %v, want flag.ErrHelp", err)
	}
}

func TestSetUsageListsEveryFlagOnce(t *testing.T) {
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.String("broker", "127.0.0.1:9092", "where")
	fs.Int("rounds", 5, "how many")
	fs.Bool("verbose", false, "talk")
	SetUsage(fs, "usage: cmd [flags]", []Group{{Title: "Job", Flags: []string{"rounds", "broker"}}})
	fs.Usage()
	s := out.String()
	for _, want := range []string{"usage: cmd [flags]", "Job:", "--rounds int", "(default 5)", "Other:", "--verbose"} {
		if !strings.Contains(s, want) {
			t.Errorf("usage lacks %q:\n%s", want, s)
		}
	}
	for _, f := range []string{"--broker", "--rounds", "--verbose"} {
		if n := strings.Count(s, f); n != 1 {
			t.Errorf("%s listed %d times:\n%s", f, n, s)
		}
	}
	if strings.Index(s, "--rounds") > strings.Index(s, "--broker") {
		t.Errorf("group order not kept:\n%s", s)
	}
}
