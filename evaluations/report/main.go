// Command report regenerates the measured tables of evaluations/README.md
// from the JSON results the evaluation tools write (evaluations/results).
//
// The README is prose with marked regions. A region opens with a line
//
//	<!-- report: results/stress.json -->
//
// and closes with
//
//	<!-- end report -->
//
// and report replaces what lies between with tables rendered from the named
// file (a path relative to the README's directory). A region opened with
// "<!-- report: unlisted -->" renders every result no other region names, so
// a new result file cannot go unreported. Prose outside the regions is kept
// as written; figures belong in the regions, so they cannot drift from the
// JSON they come from.
//
//	go run ./evaluations/report          # rewrite evaluations/README.md
//	go run ./evaluations/report -check   # fail if it is not up to date
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func main() { cli.Main("report", run) }

func run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	readme := fs.String("readme", "evaluations/README.md", "the README whose marked regions are regenerated; result paths in its markers are relative to its directory")
	check := fs.Bool("check", false, "write nothing; fail if the README differs from what would be written")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	old, err := os.ReadFile(*readme)
	if err != nil {
		return fmt.Errorf("read the README: %w", err)
	}
	out, err := Generate(old, os.DirFS(filepath.Dir(*readme)))
	if err != nil {
		return fmt.Errorf("%s: %w", *readme, err)
	}
	if bytes.Equal(old, out) {
		fmt.Fprintf(stdout, "%s is up to date\n", *readme)
		return nil
	}
	if *check {
		return fmt.Errorf("%s is out of date: run go run ./evaluations/report", *readme)
	}
	if err := os.WriteFile(*readme, out, 0o644); err != nil {
		return fmt.Errorf("write the README: %w", err)
	}
	fmt.Fprintf(stdout, "%s regenerated\n", *readme)
	return nil
}
