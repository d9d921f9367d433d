// Package linefile reads the small configuration files FDxKafka takes (a
// tokens file, Kafka client properties, a client list): text with one entry a
// line, blank lines and whole-line '#' comments ignored. Comments take whole
// lines only, so that a value (a token, a password) may contain '#'.
package linefile

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Line is one entry: its text, trimmed, and its 1-based line number.
type Line struct {
	N    int
	Text string
}

// Read returns the entries of the file at path. Errors name the file but
// never quote its content, which may be secret.
func Read(path string) ([]Line, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Line
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		out = append(out, Line{N: n, Text: text})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}
