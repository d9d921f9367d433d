package grpcchan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// wal is the gRPC channel's log of accepted updates for the open round. Kafka
// keeps updates in the broker until a round commits; gRPC has only the
// aggregator's memory, so an update is appended here (and synced) before
// its sender is told it was accepted, and replayed after a restart.
//
// A record is a 4-byte little-endian length, the CRC-32C of the payload (4
// bytes, little-endian) and the payload, an encoded Update. Only the last
// append can be torn by a crash (each append is synced before the next), so
// openWAL cuts an incomplete or checksum-failing record at the end of the
// file: otherwise the next append would land after the garbage and a second
// crash in the same round would replay garbage. A bad record followed by
// more data is not a tear but corruption, and fails the open.
type wal struct {
	path string
	f    *os.File
}

const (
	walHeader    = 8
	maxWALRecord = 1 << 30
)

var walCRC = crc32.MakeTable(crc32.Castagnoli)

// openWAL opens (or creates) the log at path and cuts a torn tail.
func openWAL(path string) (*wal, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open update log: %w", err)
	}
	w := &wal{path: path, f: f}
	if err := w.cutTornTail(); err != nil {
		f.Close()
		return nil, err
	}
	// A newly created log must survive a crash too: its directory entry
	// is durable only once the directory is synced.
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, fmt.Errorf("open update log: %w", err)
	}
	return w, nil
}

// cutTornTail truncates the file to its last complete, intact record.
func (w *wal) cutTornTail() error {
	data, err := w.readAll()
	if err != nil {
		return err
	}
	good, err := w.scan(data, nil)
	if err != nil {
		return err
	}
	if good == len(data) {
		return nil
	}
	if err := w.f.Truncate(int64(good)); err != nil {
		return fmt.Errorf("update log %s: cut torn tail at byte %d: %w", w.path, good, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("update log %s: sync after cutting torn tail: %w", w.path, err)
	}
	return nil
}

// scan walks the records of data, calling fn (when not nil) with each
// payload, and returns the length of the intact prefix.
func (w *wal) scan(data []byte, fn func(payload []byte, off int) error) (int, error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < walHeader {
			return off, nil // torn header
		}
		n := binary.LittleEndian.Uint32(rest)
		if n > maxWALRecord || int(n) > len(rest)-walHeader {
			return off, nil // torn payload (or a torn, garbled length)
		}
		payload := rest[walHeader : walHeader+int(n)]
		if crc32.Checksum(payload, walCRC) != binary.LittleEndian.Uint32(rest[4:]) {
			if walHeader+int(n) == len(rest) {
				return off, nil // the last record, torn
			}
			return off, fmt.Errorf("update log %s: corrupt record at byte %d (checksum mismatch, %d bytes follow)", w.path, off, len(rest)-walHeader-int(n))
		}
		if fn != nil {
			if err := fn(payload, off); err != nil {
				return off, err
			}
		}
		off += walHeader + int(n)
	}
	return off, nil
}

func (w *wal) readAll() ([]byte, error) {
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read update log: %w", err)
	}
	data, err := io.ReadAll(w.f)
	if err != nil {
		return nil, fmt.Errorf("read update log: %w", err)
	}
	return data, nil
}

// append stores u durably.
func (w *wal) append(u *fdxv1.Update) error {
	b, err := proto.Marshal(u)
	if err != nil {
		return err
	}
	rec := make([]byte, walHeader+len(b))
	binary.LittleEndian.PutUint32(rec, uint32(len(b)))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(b, walCRC))
	copy(rec[walHeader:], b)
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
	data, err := w.readAll()
	if err != nil {
		return nil, err
	}
	var out []*fdxv1.Update
	_, err = w.scan(data, func(payload []byte, off int) error {
		u := &fdxv1.Update{}
		if err := proto.Unmarshal(payload, u); err != nil {
			return fmt.Errorf("update log %s: corrupt record at byte %d: %w", w.path, off, err)
		}
		if u.GetBaseRound() == round {
			out = append(out, u)
		}
		return nil
	})
	return out, err
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

// syncDir makes a rename or a creation in dir durable: without it, a crash
// can undo the new directory entry although the file's data was synced.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
