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

// wal is the gRPC channel's log of accepted updates for the open round. Kafka
// keeps updates in the broker until a round commits; gRPC has only the
// aggregator's memory, so an update is appended here (and synced) before
// its sender is told it was accepted, and replayed after a restart.
// Records are a 4-byte little-endian length and the encoded Update; a torn
// tail from a crash mid-append is ignored.
type wal struct {
	path string
	f    *os.File
}

const maxWALRecord = 1 << 30

func openWAL(path string) (*wal, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open update log: %w", err)
	}
	return &wal{path: path, f: f}, nil
}

// append stores u durably.
func (w *wal) append(u *fdxv1.Update) error {
	b, err := proto.Marshal(u)
	if err != nil {
		return err
	}
	rec := make([]byte, 4+len(b))
	binary.LittleEndian.PutUint32(rec, uint32(len(b)))
	copy(rec[4:], b)
	if _, err := w.f.Write(rec); err != nil {
		return fmt.Errorf("append to update log: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync update log: %w", err)
	}
	return nil
}

// read returns the logged updates for round.
func (w *wal) read(round int64) ([]*fdxv1.Update, error) {
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(w.f)
	if err != nil {
		return nil, fmt.Errorf("read update log: %w", err)
	}
	var out []*fdxv1.Update
	for len(data) >= 4 {
		n := binary.LittleEndian.Uint32(data)
		if n > maxWALRecord || int(n) > len(data)-4 {
			break // torn tail
		}
		u := &fdxv1.Update{}
		if err := proto.Unmarshal(data[4:4+n], u); err != nil {
			return nil, fmt.Errorf("update log %s: corrupt record: %w", w.path, err)
		}
		if u.GetBaseRound() == round {
			out = append(out, u)
		}
		data = data[4+n:]
	}
	return out, nil
}

// reset empties the log once a round is committed.
func (w *wal) reset() error {
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate update log: %w", err)
	}
	return w.f.Sync()
}

func (w *wal) close() error {
	if w == nil {
		return nil
	}
	return errors.Join(w.f.Close())
}
