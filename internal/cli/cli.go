// Package cli is the scaffolding every FDxKafka command shares, so that they
// behave alike: a context cancelled by the first SIGINT/SIGTERM and an
// immediate exit on the second, Go's flag exit codes (0 after -h, 2 for a
// usage mistake, 1 for a failure), and a usage text with grouped flags.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Run is a command's body: it parses args itself and writes its output
// to stdout, diagnostics to stderr.
type Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Exit codes, as Go's flag package and shells use them.
const (
	ExitOK       = 0
	ExitFailure  = 1
	ExitUsage    = 2
	ExitSignaled = 128 + 15 // a second SIGTERM: 143, as if killed by it
	// ExitOutcomeUnknown: the aggregator stopped because it cannot know
	// whether a round transaction committed (sysexits' EX_TEMPFAIL). Its
	// supervisor restarts it (systemd Restart=on-failure), and the restart
	// reads what the broker committed.
	ExitOutcomeUnknown = 75
)

// Main runs run and exits with its code. The first SIGINT or SIGTERM
// cancels run's context, so that a command can finish what must not be cut
// (an aggregator's open transaction); a second one exits at once.
func Main(name string, run Run) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		<-sigs
		fmt.Fprintf(os.Stderr, "%s: second signal; exiting now\n", name)
		os.Exit(ExitSignaled)
	}()
	code := Code(name, run(ctx, os.Args[1:], os.Stdout, os.Stderr), ctx, os.Stderr)
	cancel()
	os.Exit(code)
}

// Code maps run's error onto an exit code, printing it to stderr. A run
// stopped by the signal that cancelled ctx exits 0: it stopped as asked.
func Code(name string, err error, ctx context.Context, stderr io.Writer) int {
	var usage *UsageError
	var coded *ExitError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		fmt.Fprintf(stderr, "run '%s -h' for usage\n", name)
		return ExitUsage
	case errors.As(err, &coded):
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return coded.Code
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "%s: stopped by signal\n", name)
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	return ExitFailure
}

// ExitError makes the command exit with Code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// UsageError is a mistake on the command line.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Parse parses args with fs, which must use flag.ContinueOnError. Flag
// errors and positional arguments are usage errors; -h is flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		// flag has printed the message and the usage already.
		return &UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected arguments %q", fs.Args())
	}
	return nil
}

// LogLevel parses the value of a --log-level flag; a bad one is a usage
// error.
func LogLevel(flagName, value string) (slog.Level, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(value)); err != nil {
		return 0, Usagef("%s: %v", flagName, err)
	}
	return lvl, nil
}

// Group is a titled set of flags in a usage text.
type Group struct {
	Title string
	Flags []string
}

// SetUsage makes fs print synopsis, then its flags under the groups'
// titles (flags in no group come last, under "Other"). Every flag of fs
// is listed exactly once.
func SetUsage(fs *flag.FlagSet, synopsis string, groups []Group) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintln(w, strings.TrimRight(synopsis, "\n"))
		listed := map[string]bool{}
		for _, g := range groups {
			fmt.Fprintf(w, "\n%s:\n", g.Title)
			for _, name := range g.Flags {
				if f := fs.Lookup(name); f != nil {
					printFlag(w, f)
					listed[name] = true
				}
			}
		}
		first := true
		fs.VisitAll(func(f *flag.Flag) {
			if listed[f.Name] {
				return
			}
			if first {
				fmt.Fprintf(w, "\nOther:\n")
				first = false
			}
			printFlag(w, f)
		})
	}
}

func printFlag(w io.Writer, f *flag.Flag) {
	name, usage := flag.UnquoteUsage(f)
	line := "  --" + f.Name
	if name != "" {
		line += " " + name
	}
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
		usage += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintf(w, "%-28s %s\n", line, usage)
}
