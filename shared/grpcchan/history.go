package grpcchan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// The history file (StateFile + ".history") is the gRPC channel's record of
// every committed round, what the model topic's log is on Kafka: one entry
// per published model, holding its round, contributors, metrics and final
// flag but not its parameters. An entry is appended after the state file
// is renamed into place; a crash between the two is repaired when the
// server next opens (reconcileHistory), so every committed model has
// exactly one entry.

// historyEntry strips m down to what the history keeps.
func historyEntry(m *fdxv1.GlobalModel) *fdxv1.GlobalModel {
	return &fdxv1.GlobalModel{Job: m.GetJob(), Round: m.GetRound(), Final: m.GetFinal(),
		Contributors: m.GetContributors(), Metrics: m.GetMetrics(), PublishedAt: m.GetPublishedAt()}
}

// appendHistory appends m's entry to the history at path and syncs it.
func appendHistory(path string, m *fdxv1.GlobalModel) error {
	b, err := proto.Marshal(historyEntry(m))
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open round history: %w", err)
	}
	rec := binary.LittleEndian.AppendUint32(nil, uint32(len(b)))
	if _, err := f.Write(append(rec, b...)); err != nil {
		f.Close()
		return fmt.Errorf("append to round history: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync round history: %w", err)
	}
	return f.Close()
}

// ReadHistory returns the committed rounds a gRPC aggregator recorded next
// to its state file, oldest first: one model per published round, without
// parameters. A torn last entry (a crash mid-append) is ignored.
func ReadHistory(stateFile string) ([]*fdxv1.GlobalModel, error) {
	data, err := os.ReadFile(stateFile + ".history")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read round history: %w", err)
	}
	var out []*fdxv1.GlobalModel
	for len(data) >= 4 {
		n := binary.LittleEndian.Uint32(data)
		if int64(n) > int64(len(data)-4) {
			break // torn tail
		}
		m := &fdxv1.GlobalModel{}
		if err := proto.Unmarshal(data[4:4+n], m); err != nil {
			return nil, fmt.Errorf("round history %s: corrupt entry: %w", stateFile, err)
		}
		out = append(out, m)
		data = data[4+n:]
	}
	return out, nil
}

// reconcileHistory appends the state file's model to the history when a
// crash came between renaming the state file and appending its entry, and
// cuts a torn last entry off so later appends stay readable.
func reconcileHistory(stateFile string, state *fdxv1.GlobalModel) error {
	path := stateFile + ".history"
	hist, err := ReadHistory(stateFile)
	if err != nil {
		return err
	}
	if err := cutTornTail(path); err != nil {
		return err
	}
	if len(hist) > 0 && hist[len(hist)-1].GetRound() >= state.GetRound() {
		return nil
	}
	return appendHistory(path, state)
}

// cutTornTail truncates the file at path after its last whole record.
func cutTornTail(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	whole := 0
	for len(data)-whole >= 4 {
		n := int64(binary.LittleEndian.Uint32(data[whole:]))
		if n > int64(len(data)-whole-4) {
			break
		}
		whole += 4 + int(n)
	}
	if whole == len(data) {
		return nil
	}
	if err := f.Truncate(int64(whole)); err != nil {
		return fmt.Errorf("cut torn tail of %s: %w", path, err)
	}
	return f.Sync()
}
