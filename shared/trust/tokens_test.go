package trust

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("good", strings.Join([]string{
		"# participants of job mnist",
		"",
		"1 tok-one",
		"  2=tok-two  ",
		"3 = dG9rZW4=",
		"4\ttok#four",
		"5 =tok-five\r",
	}, "\n"))
	got, err := LoadTokens(good)
	if err != nil {
		t.Fatalf("LoadTokens: %v", err)
	}
	want := map[string]string{"1": "tok-one", "2": "tok-two", "3": "dG9rZW4=", "4": "tok#four", "5": "tok-five"}
	if len(got) != len(want) {
		t.Errorf("LoadTokens = %v; want %v", got, want)
	}
	for id, tok := range want {
		if got[id] != tok {
			t.Errorf("token of %q = %q; want %q", id, got[id], tok)
		}
	}

	for _, tc := range []struct {
		name, content, want string
	}{
		{"duplicate client", "a secret-1\nb secret-2\na secret-3\n", ":3: client \"a\" listed twice"},
		{"shared token", "a secret-1\nb secret-1\n", ":2: client \"b\" has the same token as client \"a\""},
		{"no token", "a secret-1\nb\n", ":2: no token"},
		{"empty token", "a secret-1\nb=\n", ":2: client \"b\" has an empty token"},
		{"empty id", "=secret-1\n", ":1: empty client id"},
		{"space in token", "a secret-1 secret-2\n", ":1: client \"a\": token contains whitespace"},
		{"empty file", "# nobody yet\n\n", "no tokens"},
	} {
		p := write(strings.ReplaceAll(tc.name, " ", "-"), tc.content)
		_, err := LoadTokens(p)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want one naming %s and saying %q", tc.name, err, p, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error %q reveals a token", tc.name, err)
		}
	}
	if _, err := LoadTokens(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadTokens of a missing file: %v; want ErrNotExist", err)
	}
}
