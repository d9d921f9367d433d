package kafkatest

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Environment of the secure real broker (deploy/kafka/kafka.sh start
// --secure; scripts/test.sh starts one).
const (
	// EnvSecureBrokers is its bootstrap address.
	EnvSecureBrokers = "FDX_KAFKA_SECURE_BROKERS"
	// EnvSecureDir is its state dir, whose secrets/ holds the principals'
	// Kafka client properties.
	EnvSecureDir = "FDX_KAFKA_SECURE_DIR"
	// EnvSecureTLSBrokers is the bootstrap address of its SASL_SSL
	// listener (kafka.sh's FDX_KAFKA_TLS_PORT), whose principals'
	// properties are secrets/<role>-tls.properties.
	EnvSecureTLSBrokers = "FDX_KAFKA_SECURE_TLS_BROKERS"
)

// Secure is a real broker in kafka.sh's secure mode: SASL/SCRAM users for
// the aggregator and the clients, and ACLs that deny what they do not grant.
type Secure struct {
	Brokers string
	dir     string
	// suffix names the properties files of this listener.
	suffix string
	// plain is the SASL_PLAINTEXT listener, which kafka.sh's tools use.
	plain string
}

// SecureBroker returns the secure broker, and skips t when none is
// configured (scripts/test.sh always configures one).
func SecureBroker(t testing.TB) *Secure {
	t.Helper()
	b, dir := os.Getenv(EnvSecureBrokers), os.Getenv(EnvSecureDir)
	if b == "" || dir == "" {
		t.Skipf("no secure broker: set %s and %s (scripts/test.sh does)", EnvSecureBrokers, EnvSecureDir)
	}
	return &Secure{Brokers: b, dir: dir, plain: b}
}

// TLS returns the same broker's SASL_SSL listener: the same users and
// ACLs, over TLS. It fails t when the secure broker has none
// (scripts/test.sh gives it one).
func (s *Secure) TLS(t testing.TB) *Secure {
	t.Helper()
	b := os.Getenv(EnvSecureTLSBrokers)
	if b == "" {
		t.Fatalf("the secure broker %s has no SASL_SSL listener: set %s (kafka.sh start --secure with FDX_KAFKA_TLS_CERT, _KEY, _CA; scripts/test.sh does)", s.Brokers, EnvSecureTLSBrokers)
	}
	return &Secure{Brokers: b, dir: s.dir, suffix: "-tls", plain: s.plain}
}

// Props returns the Kafka client properties of role: "aggregator", "client" or
// "admin".
func (s *Secure) Props(t testing.TB, role string) map[string]string {
	t.Helper()
	path := filepath.Join(s.dir, "secrets", role+s.suffix+".properties")
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("secure broker credentials: %v", err)
	}
	defer f.Close()
	props := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			props[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil || len(props) == 0 {
		t.Fatalf("secure broker credentials %s: %v (%d settings)", path, err, len(props))
	}
	return props
}

// Grant runs `kafka.sh acls job`: the ACLs the deployment grants for a job.
func (s *Secure) Grant(t testing.TB, job string) {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.Split(s.plain, ",")[0])
	if err != nil {
		t.Fatalf("%s=%s: %v", EnvSecureBrokers, s.plain, err)
	}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(t), "deploy", "kafka", "kafka.sh"), "acls", job)
	cmd.Env = append(os.Environ(), "FDX_KAFKA_DIR="+s.dir, "FDX_KAFKA_PORT="+port)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kafka.sh acls %s: %v\n%s", job, err, out)
	}
	t.Logf("kafka.sh acls %s: %s", job, strings.TrimSpace(string(out)))
}

// RepoRoot is the directory of go.mod above the test's working directory:
// where tests find the repo's scripts (deploy/kafka/kafka.sh) and README.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
