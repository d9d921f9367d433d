package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/fdxkafka/fdxkafka/evaluations/harness"
)

// resultsDir is where the evaluation tools write their JSON, relative to
// the README.
const resultsDir = "results"

const (
	unlisted = "unlisted"
	endLine  = "<!-- end report -->"
)

var beginLine = regexp.MustCompile(`^<!-- report: (\S+) -->$`)

// Generate returns readme with every marked region rendered afresh from the
// JSON results under results/ in fsys (the README's directory). It fails on
// a region that is not closed, names a missing or malformed file, or on a
// result that no region renders.
func Generate(readme []byte, fsys fs.FS) ([]byte, error) {
	files, err := resultFiles(fsys)
	if err != nil {
		return nil, err
	}
	lines := strings.SplitAfter(string(readme), "\n")
	named := map[string]bool{}
	hasUnlisted := false
	for i, l := range lines {
		m := beginLine.FindStringSubmatch(strings.TrimRight(l, "\n"))
		if m == nil {
			continue
		}
		if m[1] == unlisted {
			hasUnlisted = true
			continue
		}
		if named[m[1]] {
			return nil, fmt.Errorf("line %d: %s has a second region", i+1, m[1])
		}
		named[m[1]] = true
	}
	var rest []string
	for _, f := range files {
		if !named[f] {
			rest = append(rest, f)
		}
	}
	if len(rest) > 0 && !hasUnlisted {
		return nil, fmt.Errorf("no region renders %s: add <!-- report: %s --> or <!-- report: %s -->", strings.Join(rest, ", "), rest[0], unlisted)
	}

	var out strings.Builder
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		out.WriteString(l)
		m := beginLine.FindStringSubmatch(strings.TrimRight(l, "\n"))
		if m == nil {
			continue
		}
		end := i + 1
		for end < len(lines) && strings.TrimRight(lines[end], "\n") != endLine {
			if beginLine.MatchString(strings.TrimRight(lines[end], "\n")) {
				return nil, fmt.Errorf("line %d: region %s is not closed before the next one opens", i+1, m[1])
			}
			end++
		}
		if end == len(lines) {
			return nil, fmt.Errorf("line %d: region %s has no %q", i+1, m[1], endLine)
		}
		var body string
		if m[1] == unlisted {
			body, err = renderUnlisted(fsys, rest)
		} else {
			body, err = renderFile(fsys, m[1])
		}
		if err != nil {
			return nil, err
		}
		out.WriteString("\n" + body + "\n")
		out.WriteString(lines[end])
		i = end
	}
	return []byte(out.String()), nil
}

// resultFiles lists the JSON files under results/, in lexical order.
func resultFiles(fsys fs.FS) ([]string, error) {
	var files []string
	err := fs.WalkDir(fsys, resultsDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && path.Ext(p) == ".json" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list the results: %w", err)
	}
	return files, nil
}

func renderUnlisted(fsys fs.FS, files []string) (string, error) {
	if len(files) == 0 {
		return "Every result is shown above.\n", nil
	}
	var b strings.Builder
	for i, f := range files {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "#### %s\n\n", f)
		body, err := renderFile(fsys, f)
		if err != nil {
			return "", err
		}
		b.WriteString(body)
	}
	return b.String(), nil
}

// renderFile renders one result file by what it holds: a stress report, a
// sweep, netbench's runs, a strategy experiment, or anything else as a link.
func renderFile(fsys fs.FS, name string) (string, error) {
	raw, err := fs.ReadFile(fsys, name)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	source := fmt.Sprintf("Source: [%s](%s).\n", name, name)
	has := func(keys ...string) bool {
		for _, k := range keys {
			if _, ok := top[k]; !ok {
				return false
			}
		}
		return true
	}
	var body string
	switch {
	case has("setup", "channels"):
		body, err = renderStress(raw)
	case has("builds", "sizes"):
		body, err = renderComparison(raw)
	case has("sizes", "runs"):
		body, err = renderSweep(raw)
	case has("kind", "rounds_to_target") && strings.Contains(string(top["kind"]), "python-cnn"):
		body, err = renderCNN(raw)
	case has("note", "results") && strings.HasPrefix(name, "results/netbench/"):
		body, err = renderNetbench(raw)
	case has("command", "runs") && strings.Contains(string(top["command"]), "evaluations/strategies"):
		body, err = renderStrategies(raw)
	default:
		body = "No table is defined for this kind of result.\n"
		var cmd string
		if json.Unmarshal(top["command"], &cmd) == nil && cmd != "" {
			body += fmt.Sprintf("Produced by `%s`.\n", cmd)
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return body + "\n" + source, nil
}

func renderStress(raw []byte) (string, error) {
	var rep harness.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return "", err
	}
	if len(rep.Channels) == 0 {
		return "", errors.New("a report with no channels")
	}
	var b bytes.Buffer
	if err := harness.WriteMarkdown(&b, &rep); err != nil {
		return "", err
	}
	if r := egressRatios(rep.Channels); r != "" {
		fmt.Fprintf(&b, "\nAggregator egress as a multiple of Kafka's: %s.\n", r)
	}
	fmt.Fprintf(&b, "\nRun started %s, %.1f s wall time.\n", rep.StartedAt.UTC().Format("2006-01-02 15:04 MST"), rep.WallMs/1000)
	return b.String(), nil
}

func renderComparison(raw []byte) (string, error) {
	var c harness.Comparison
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", err
	}
	if len(c.Sizes) == 0 {
		return "", errors.New("a comparison with no client counts")
	}
	var b bytes.Buffer
	harness.WriteComparisonMarkdown(&b, &c)
	fmt.Fprintf(&b, "\nProduced by `%s`, started %s, %.1f s wall time.\n", c.Command, c.StartedAt.UTC().Format("2006-01-02 15:04 MST"), c.WallMs/1000)
	return b.String(), nil
}

func renderSweep(raw []byte) (string, error) {
	var sw harness.SweepReport
	if err := json.Unmarshal(raw, &sw); err != nil {
		return "", err
	}
	if len(sw.Runs) == 0 {
		return "", errors.New("a sweep with no runs")
	}
	var b bytes.Buffer
	if err := harness.WriteSweepMarkdown(&b, &sw); err != nil {
		return "", err
	}
	var parts []string
	for _, r := range sw.Runs {
		if e := egressRatios(r.Channels); e != "" {
			parts = append(parts, fmt.Sprintf("%d clients: %s", r.Setup.Clients, e))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, "\nAggregator egress as a multiple of Kafka's: %s.\n", strings.Join(parts, "; "))
	}
	fmt.Fprintf(&b, "\nRun started %s, %.1f s wall time.\n", sw.StartedAt.UTC().Format("2006-01-02 15:04 MST"), sw.WallMs/1000)
	return b.String(), nil
}

// egressRatios says how many times the Kafka aggregator's egress each other
// channel's aggregator sent: the fan-out the broker takes over.
func egressRatios(cs []*harness.ChannelReport) string {
	var kafka int64
	for _, c := range cs {
		if c.Channel == harness.Kafka {
			kafka = c.Aggregator.BytesSent
		}
	}
	if kafka <= 0 {
		return ""
	}
	var parts []string
	for _, c := range cs {
		if c.Channel != harness.Kafka {
			parts = append(parts, fmt.Sprintf("%s %.1f×", c.Channel, float64(c.Aggregator.BytesSent)/float64(kafka)))
		}
	}
	return strings.Join(parts, ", ")
}

// strategyResult is what evaluations/strategies writes per experiment.
type strategyResult struct {
	Command string         `json:"command"`
	Options map[string]any `json:"options"`
	Runs    []strategyRun  `json:"runs"`
}

type strategyRun struct {
	Name     string           `json:"name"`
	Accuracy []float64        `json:"accuracy"`
	Final    float64          `json:"final_accuracy"`
	Rejected map[string]int64 `json:"rejected"`
	Epsilon  []float64        `json:"epsilon"`
}

func renderStrategies(raw []byte) (string, error) {
	var r strategyResult
	if err := json.Unmarshal(raw, &r); err != nil {
		return "", err
	}
	if len(r.Runs) == 0 {
		return "", errors.New("an experiment with no runs")
	}
	for _, run := range r.Runs {
		if len(run.Accuracy) == 0 {
			return "", fmt.Errorf("run %q has no accuracy per round", run.Name)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "`%s`", r.Command)
	if len(r.Options) > 0 {
		var opts []string
		for _, k := range slices.Sorted(maps.Keys(r.Options)) {
			opts = append(opts, fmt.Sprintf("%s %v", k, r.Options[k]))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(opts, ", "))
	}
	b.WriteString(".\n\n")
	switch experiment(r.Command) {
	case "byzantine":
		byzantineTable(&b, r.Runs)
	case "noniid":
		progressTable(&b, r.Runs)
	case "dp":
		dpTable(&b, r.Runs)
	default:
		progressTable(&b, r.Runs)
	}
	return b.String(), nil
}

func experiment(command string) string {
	f := strings.Fields(command)
	for i, w := range f {
		if (w == "-experiment" || w == "--experiment") && i+1 < len(f) {
			return f[i+1]
		}
		if v, ok := strings.CutPrefix(w, "-experiment="); ok {
			return v
		}
	}
	return ""
}

// byzantineTable sets each run's final accuracy against the first run, the
// clean reference without attackers.
func byzantineTable(b *strings.Builder, runs []strategyRun) {
	ref := runs[0].Final
	fmt.Fprintf(b, "| run | rounds | final accuracy | vs %s | rejected |\n|---|--:|--:|--:|---|\n", runs[0].Name)
	for i, r := range runs {
		diff := "—"
		if i > 0 {
			diff = fmt.Sprintf("%+.2f pt", 100*(r.Final-ref))
		}
		fmt.Fprintf(b, "| %s | %d | %.4f | %s | %s |\n", r.Name, len(r.Accuracy), r.Final, diff, rejectedText(r.Rejected))
	}
}

// progressTable shows accuracy after the first round, the middle one and
// the last, and the best over all rounds.
func progressTable(b *strings.Builder, runs []strategyRun) {
	n := len(runs[0].Accuracy)
	cols := slices.Compact([]int{1, (n + 1) / 2, n})
	b.WriteString("| run |")
	for _, c := range cols {
		fmt.Fprintf(b, " round %d |", c)
	}
	b.WriteString(" best |\n|---|" + strings.Repeat("--:|", len(cols)+1) + "\n")
	for _, r := range runs {
		fmt.Fprintf(b, "| %s |", r.Name)
		for _, c := range cols {
			if c <= len(r.Accuracy) {
				fmt.Fprintf(b, " %.4f |", r.Accuracy[c-1])
			} else {
				b.WriteString(" |")
			}
		}
		fmt.Fprintf(b, " %.4f |\n", slices.Max(r.Accuracy))
	}
}

// dpTable shows the privacy spent and the accuracy after the first and the
// last round of each private run; runs without ε are references.
func dpTable(b *strings.Builder, runs []strategyRun) {
	var refs []string
	b.WriteString("| run | ε after round 1 | accuracy | rounds | ε after the last | accuracy |\n|---|--:|--:|--:|--:|--:|\n")
	for _, r := range runs {
		if len(r.Epsilon) == 0 {
			refs = append(refs, fmt.Sprintf("%s: final accuracy %.4f", r.Name, r.Final))
			continue
		}
		last := min(len(r.Epsilon), len(r.Accuracy)) - 1
		fmt.Fprintf(b, "| %s | %.2f | %.4f | %d | %.2f | %.4f |\n", r.Name, r.Epsilon[0], r.Accuracy[0], last+1, r.Epsilon[last], r.Accuracy[last])
	}
	if len(refs) > 0 {
		fmt.Fprintf(b, "\nReference: %s.\n", strings.Join(refs, "; "))
	}
}

func rejectedText(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
