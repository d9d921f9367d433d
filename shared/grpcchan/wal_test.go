package grpcchan

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// walRecord encodes u as the log stores it.
func walRecord(t *testing.T, u *fdxv1.Update) []byte {
	t.Helper()
	dir := t.TempDir()
	w, err := openWAL(filepath.Join(dir, "rec"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := w.append(u); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(w.path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func ids(us []*fdxv1.Update) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.GetClientId()
	}
	return out
}

// TestWALCutsTornTail: whatever way the last append was torn, opening the
// log cuts it off, so the next append lands right after the last intact
// record and a reopen reads every record.
func TestWALCutsTornTail(t *testing.T) {
	upd := func(id string) *fdxv1.Update {
		return &fdxv1.Update{Job: testJob, ClientId: id, BaseRound: 4, NumExamples: 9}
	}
	full := walRecord(t, upd("torn"))
	flipped := slices.Clone(full)
	flipped[len(flipped)-1] ^= 0xff
	huge := slices.Clone(full[:walHeader])
	binary.LittleEndian.PutUint32(huge, maxWALRecord+1)
	for _, tc := range []struct {
		name string
		tail []byte
	}{
		{"half a length", full[:2]},
		{"header only", full[:walHeader]},
		{"half a payload", full[:walHeader+(len(full)-walHeader)/2]},
		{"all but one byte", full[:len(full)-1]},
		{"checksum mismatch", flipped},
		{"garbled length", huge},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.pb.updates")
			good := walRecord(t, upd("a"))
			appendFile(t, path, good)
			appendFile(t, path, tc.tail)

			w, err := openWAL(path)
			if err != nil {
				t.Fatalf("openWAL with a torn tail: %v", err)
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(good)) {
				t.Fatalf("after open the log has %d bytes (%v); want the %d of the intact record", fi.Size(), err, len(good))
			}
			if err := w.append(upd("b")); err != nil {
				t.Fatal(err)
			}
			w.close()
			w, err = openWAL(path)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer w.close()
			got, err := w.read(4)
			if err != nil || !slices.Equal(ids(got), []string{"a", "b"}) {
				t.Fatalf("read = %v, %v; want updates a and b", ids(got), err)
			}
		})
	}
}

// TestWALCorruptMiddle: a damaged record followed by intact ones is not a
// torn append; dropping it would lose acknowledged updates silently.
func TestWALCorruptMiddle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.pb.updates")
	bad := walRecord(t, &fdxv1.Update{Job: testJob, ClientId: "a", BaseRound: 1})
	bad[len(bad)-1] ^= 0xff
	appendFile(t, path, bad)
	appendFile(t, path, walRecord(t, &fdxv1.Update{Job: testJob, ClientId: "b", BaseRound: 1}))
	w, err := openWAL(path)
	if err == nil {
		w.close()
		t.Fatal("openWAL accepted a log with a corrupt record in the middle")
	}
	if !strings.Contains(err.Error(), "corrupt record at byte 0") {
		t.Errorf("openWAL: %v; want it to name the corrupt record", err)
	}
}

// TestTwoCrashesInOneRound: the aggregator crashes mid-append (a torn
// record at the end of the log), restarts, accepts another update in the
// same round and crashes again. The second restart must replay exactly the
// two acknowledged updates. Before torn tails were cut, the new append
// landed behind the garbage and the replay decoded a corrupt record.
func TestTwoCrashesInOneRound(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.pb")
	open := func() *Server {
		t.Helper()
		s, err := NewServer(ServerOptions{Addr: "127.0.0.1:0", Job: testJob, StateFile: state})
		if err != nil {
			t.Fatalf("NewServer: %v", err)
		}
		return s
	}
	ctx := testCtx(t)
	submit := func(s *Server, id string) {
		t.Helper()
		c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: id})
		errc := make(chan error, 1)
		go func() { errc <- c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: id, BaseRound: 1, NumExamples: 5}) }()
		d, err := s.Next(ctx)
		if err != nil || d.Update.GetClientId() != id {
			t.Fatalf("Next = %v, %v; want %s's update", d.Update, err, id)
		}
		if err := d.Accept(); err != nil {
			t.Fatalf("Accept %s: %v", id, err)
		}
		d.Reply(nil)
		if err := <-errc; err != nil {
			t.Fatalf("Submit %s: %v", id, err)
		}
	}
	replay := func(s *Server, want ...string) {
		t.Helper()
		m, err := s.Latest(ctx, nil)
		if err != nil || m.GetRound() != 1 {
			t.Fatalf("Latest after restart = %v, %v; want round 1", m, err)
		}
		var got []string
		for range want {
			d, err := s.Next(ctx)
			if err != nil {
				t.Fatalf("replay: %v", err)
			}
			got = append(got, d.Update.GetClientId())
		}
		if !slices.Equal(got, want) || len(s.replay) != 0 {
			t.Fatalf("replayed %v (+%d more); want exactly %v", got, len(s.replay), want)
		}
	}

	s := open()
	if m, err := s.Latest(ctx, nil); err != nil || m != nil {
		t.Fatalf("Latest on a fresh state = %v, %v; want none", m, err)
	}
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	submit(s, "a")
	// Crash 1, mid-append: half of b's record reached the file, and b was
	// never told it was accepted.
	torn, err := proto.Marshal(&fdxv1.Update{Job: testJob, ClientId: "b", BaseRound: 1, NumExamples: 5})
	if err != nil {
		t.Fatal(err)
	}
	rec := binary.LittleEndian.AppendUint32(nil, uint32(len(torn)))
	rec = binary.LittleEndian.AppendUint32(rec, 0)
	rec = append(rec, torn[:len(torn)/2]...)
	s.Close()
	appendFile(t, state+".updates", rec)

	s = open()
	replay(s, "a")
	submit(s, "c")
	s.Close() // crash 2: the round is still open

	s = open()
	defer s.Close()
	replay(s, "a", "c")
}
