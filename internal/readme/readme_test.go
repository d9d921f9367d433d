// Package readme holds the test that keeps README.md's package table true
// to the tree: every Go package is named in it, and everything it names
// exists. A newcomer reads the table to find where things live; a table
// that lags the tree sends them to packages that are gone.
package readme

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/fdxkafka/fdxkafka/"

// root is the module's root, seen from this package's directory.
const root = "../.."

func TestPackageTableMatchesTree(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	table, err := packageTable(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "list", mod+"...").Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, msg)
	}
	var pkgs []string
	for _, p := range strings.Fields(string(out)) {
		pkgs = append(pkgs, strings.TrimPrefix(p, mod))
	}
	isDir := func(p string) bool {
		fi, err := os.Stat(filepath.Join(root, p))
		return err == nil && fi.IsDir()
	}
	for _, problem := range check(table, pkgs, isDir) {
		t.Error(problem)
	}
}

// The check finds a package missing from the table and a name that is not
// in the tree, and accepts a table that matches.
func TestCheckCatchesDrift(t *testing.T) {
	pkgs := []string{"a", "a/b", "c/x", "c/y"}
	dirs := map[string]bool{"deploy/k": true}
	isDir := func(p string) bool { return dirs[p] }
	if got := check([]string{"a", "a/b", "c/...", "deploy/k"}, pkgs, isDir); len(got) != 0 {
		t.Errorf("a matching table: %q", got)
	}
	got := check([]string{"a", "c/...", "gone", "d/..."}, pkgs, isDir)
	for _, want := range []string{"a/b", "gone", "d/..."} {
		if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("problems %q do not mention %s", got, want)
		}
	}
}

var tick = regexp.MustCompile("`([^`]+)`")

// packageTable returns the paths named in the first column of the table
// under the "### Packages" heading.
func packageTable(readme string) ([]string, error) {
	_, after, ok := strings.Cut(readme, "\n### Packages\n")
	if !ok {
		return nil, errNoTable
	}
	var names []string
	inTable := false
	for _, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range tick.FindAllStringSubmatch(cells[1], -1) {
			names = append(names, m[1])
		}
	}
	if len(names) == 0 {
		return nil, errNoTable
	}
	return names, nil
}

type tableError string

func (e tableError) Error() string { return string(e) }

const errNoTable = tableError(`README.md has no package table under "### Packages"`)

// check returns what is wrong between the table's names and the packages:
// a package no name covers, a name that is neither a package nor a
// directory, a "dir/..." that covers no package.
func check(names, pkgs []string, isDir func(string) bool) []string {
	var problems []string
	covered := func(p string) bool {
		for _, n := range names {
			if n == p {
				return true
			}
			if prefix, ok := strings.CutSuffix(n, "/..."); ok && strings.HasPrefix(p, prefix+"/") {
				return true
			}
		}
		return false
	}
	for _, p := range pkgs {
		if !covered(p) {
			problems = append(problems, "package "+p+" is not in README.md's package table")
		}
	}
	for _, n := range names {
		if prefix, ok := strings.CutSuffix(n, "/..."); ok {
			if !slices.ContainsFunc(pkgs, func(p string) bool { return strings.HasPrefix(p, prefix+"/") }) {
				problems = append(problems, "README.md's package table names "+n+", which holds no package")
			}
			continue
		}
		if !slices.Contains(pkgs, n) && !isDir(n) {
			problems = append(problems, "README.md's package table names "+n+", which is not in the tree")
		}
	}
	return problems
}
