package trust

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/fdxkafka/fdxkafka/shared/linefile"
)

// LoadTokens reads the per-client tokens, client id to secret, that both
// channels authenticate clients with (gRPC bearer tokens, Kafka update
// MAC keys), from a file with one client per line:
//
//	# comment lines start with '#'; blank lines are ignored
//	client-1 s3cr3t-token-one
//	client-2=s3cr3t-token-two
//	client-3 = dG9rZW4tdGhyZWU=
//
// A line is a client id, then whitespace or '=' (or both), then the token.
// The client id ends at the first whitespace or '=', so ids cannot contain
// either; the token is the rest of the line and may contain '=' (base64
// padding) but not whitespace. Comments take whole lines only, so a token
// may contain '#'.
//
// The file is refused when a line is malformed, when a client id appears
// twice, when two clients share a token (either could then submit as the
// other), or when it holds no tokens at all: an empty map would turn
// authentication off, which must never happen by accident. Errors name the
// file and line but never a token.
func LoadTokens(path string) (map[string]string, error) {
	lines, err := linefile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	tokens := map[string]string{}
	owner := map[string]string{} // token -> client id, to find shared tokens
	for _, l := range lines {
		id, tok, err := parseTokenLine(l.Text)
		if err != nil {
			return nil, fmt.Errorf("tokens file %s:%d: %w", path, l.N, err)
		}
		if _, dup := tokens[id]; dup {
			return nil, fmt.Errorf("tokens file %s:%d: client %q listed twice", path, l.N, id)
		}
		if other, dup := owner[tok]; dup {
			return nil, fmt.Errorf("tokens file %s:%d: client %q has the same token as client %q", path, l.N, id, other)
		}
		tokens[id], owner[tok] = tok, id
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("tokens file %s: no tokens; an empty file would disable authentication", path)
	}
	return tokens, nil
}

// parseTokenLine splits a trimmed, non-comment line into client id and token.
func parseTokenLine(line string) (id, token string, err error) {
	i := strings.IndexFunc(line, func(r rune) bool { return r == '=' || unicode.IsSpace(r) })
	if i <= 0 {
		if i == 0 {
			return "", "", errors.New("empty client id; want \"client_id token\" or \"client_id=token\"")
		}
		// Not quoted: a line of just a token would print the secret.
		return "", "", errors.New("no token after the client id; want \"client_id token\" or \"client_id=token\"")
	}
	id, rest := line[:i], strings.TrimLeftFunc(line[i:], unicode.IsSpace)
	if r, ok := strings.CutPrefix(rest, "="); ok {
		rest = strings.TrimLeftFunc(r, unicode.IsSpace)
	}
	switch {
	case rest == "":
		return "", "", fmt.Errorf("client %q has an empty token", id)
	case strings.IndexFunc(rest, unicode.IsSpace) >= 0:
		return "", "", fmt.Errorf("client %q: token contains whitespace; want \"client_id token\" or \"client_id=token\"", id)
	}
	return id, rest, nil
}
