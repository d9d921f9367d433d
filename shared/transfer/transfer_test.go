package transfer

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 3))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func chunks(whole []byte, man *fdxv1.TransferManifest) [][]byte {
	var out [][]byte
	for i := range int(man.GetChunkCount()) {
		out = append(out, Chunk(whole, i, int(man.GetChunkSize())))
	}
	return out
}

func wantReason(t *testing.T, what string, rej *rules.Rejection, want rules.Reason) {
	t.Helper()
	if rej == nil || rej.Reason != want {
		t.Errorf("%s: %v; want %s", what, rej, want)
	}
}

// TestSplit: the chunks make up the whole, each matches its CRC, the last
// is the remainder; an empty whole is one empty chunk; two splits get
// different ids.
func TestSplit(t *testing.T) {
	for _, tc := range []struct{ size, chunk, n int }{{2500, 1000, 3}, {3000, 1000, 3}, {1, 1000, 1}, {0, 1000, 1}} {
		whole := randomBytes(tc.size)
		man, err := Split(whole, tc.chunk)
		if err != nil {
			t.Fatal(err)
		}
		if int(man.GetChunkCount()) != tc.n || man.GetTotalSize() != int64(tc.size) || CheckManifest(man, MaxBytes) != nil {
			t.Errorf("Split(%d, %d) = %d chunks of %d bytes, %v; want %d, consistent", tc.size, tc.chunk, man.GetChunkCount(), man.GetTotalSize(), CheckManifest(man, MaxBytes), tc.n)
		}
		cs := chunks(whole, man)
		if !bytes.Equal(bytes.Join(cs, nil), whole) {
			t.Errorf("Split(%d, %d): chunks do not make up the whole", tc.size, tc.chunk)
		}
		for i, c := range cs {
			if rej := CheckChunk(man, i, c); rej != nil {
				t.Errorf("Split(%d, %d): chunk %d: %v", tc.size, tc.chunk, i, rej)
			}
		}
	}
	a, _ := Split([]byte("x"), 10)
	b, _ := Split([]byte("x"), 10)
	if a.GetTransferId() == b.GetTransferId() {
		t.Error("two transfers got the same id")
	}
	if _, err := Split(make([]byte, MaxChunks+1), 1); err == nil {
		t.Error("Split into more than MaxChunks chunks accepted")
	}
}

func TestCheckManifest(t *testing.T) {
	whole := randomBytes(2500)
	good, err := Split(whole, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		edit func(*fdxv1.TransferManifest)
		max  int64
		want rules.Reason
	}{
		"over the reader's limit": {func(*fdxv1.TransferManifest) {}, 2000, rules.Oversize},
		"over MaxBytes":           {func(m *fdxv1.TransferManifest) { m.ChunkSize, m.TotalSize = MaxBytes, 3*MaxBytes }, 1 << 62, rules.Oversize},
		"total over the chunks":   {func(m *fdxv1.TransferManifest) { m.TotalSize = 3001 }, MaxBytes, rules.Undecodable},
		"total under the chunks":  {func(m *fdxv1.TransferManifest) { m.TotalSize = 2000 }, MaxBytes, rules.Undecodable},
		"negative total":          {func(m *fdxv1.TransferManifest) { m.TotalSize = -1 }, MaxBytes, rules.Undecodable},
		"chunk size 0":            {func(m *fdxv1.TransferManifest) { m.ChunkSize = 0 }, MaxBytes, rules.Undecodable},
		"no chunks":               {func(m *fdxv1.TransferManifest) { m.ChunkCount = 0 }, MaxBytes, rules.Undecodable},
		"fewer CRCs than chunks":  {func(m *fdxv1.TransferManifest) { m.ChunkCrc32C = m.ChunkCrc32C[:2] }, MaxBytes, rules.Undecodable},
		"short SHA-256":           {func(m *fdxv1.TransferManifest) { m.Sha256 = m.Sha256[:16] }, MaxBytes, rules.Undecodable},
	} {
		m := proto.Clone(good).(*fdxv1.TransferManifest)
		tc.edit(m)
		wantReason(t, name, CheckManifest(m, tc.max), tc.want)
	}
	if rej := CheckManifest(good, MaxBytes); rej != nil {
		t.Errorf("the true manifest: %v", rej)
	}
}

// TestVerifier checks chunks that follow their manifest in order.
func TestVerifier(t *testing.T) {
	whole := randomBytes(2500)
	man, err := Split(whole, 1000)
	if err != nil {
		t.Fatal(err)
	}
	run := func(cs [][]byte, m *fdxv1.TransferManifest) *rules.Rejection {
		v, rej := NewVerifier(m, MaxBytes)
		if rej != nil {
			return rej
		}
		for _, c := range cs {
			if rej := v.Write(c); rej != nil {
				return rej
			}
		}
		return v.Finish()
	}
	good := chunks(whole, man)
	if rej := run(good, man); rej != nil {
		t.Fatalf("the true chunks: %v", rej)
	}
	flipped := slices.Clone(good)
	flipped[1] = slices.Clone(flipped[1])
	flipped[1][5] ^= 1
	wantReason(t, "a flipped byte", run(flipped, man), rules.Checksum)
	wantReason(t, "chunks swapped", run([][]byte{good[1], good[0], good[2]}, man), rules.Checksum)
	wantReason(t, "a short chunk", run([][]byte{good[0], good[1][:999], good[2]}, man), rules.Checksum)
	wantReason(t, "a missing chunk", run(good[:2], man), rules.Incomplete)
	wantReason(t, "a chunk too many", run(append(slices.Clone(good), good[2]), man), rules.Checksum)
	forged := proto.Clone(man).(*fdxv1.TransferManifest)
	forged.Sha256[0] ^= 1
	wantReason(t, "a forged SHA-256", run(good, forged), rules.Checksum)
	bad := proto.Clone(man).(*fdxv1.TransferManifest)
	bad.ChunkCount = 4
	wantReason(t, "an inconsistent manifest", run(good, bad), rules.Undecodable)
}

// TestDigest checks chunks that arrive before their manifest.
func TestDigest(t *testing.T) {
	whole := randomBytes(2500)
	man, err := Split(whole, 1000)
	if err != nil {
		t.Fatal(err)
	}
	good := chunks(whole, man)
	digest := func(order []int, value func(i int) []byte) *Digest {
		d := NewDigest(3)
		for _, i := range order {
			d.Add(i, value(i))
		}
		return d
	}
	chunk := func(i int) []byte { return good[i] }

	d := digest([]int{0, 1, 1, 2}, chunk)
	if ordered, rej := d.Check(man); !ordered || rej != nil {
		t.Fatalf("in order, chunk 1 twice: ordered %v, %v; want the SHA-256 checked and matching", ordered, rej)
	}
	if ordered, rej := digest([]int{2, 0, 1}, chunk).Check(man); ordered || rej != nil {
		t.Errorf("out of order: ordered %v, %v; want the CRCs matching and the SHA-256 left to the caller", ordered, rej)
	}
	_, rej := digest([]int{0, 2}, chunk).Check(man)
	wantReason(t, "a missing chunk", rej, rules.Incomplete)
	_, rej = digest([]int{0, 1, 2}, func(i int) []byte {
		if i == 2 {
			c := slices.Clone(good[2])
			c[0] ^= 1
			return c
		}
		return good[i]
	}).Check(man)
	wantReason(t, "a flipped byte", rej, rules.Checksum)
	_, rej = digest([]int{0, 1, 2}, func(i int) []byte { return append(slices.Clone(good[i]), 0) }).Check(man)
	wantReason(t, "chunks over the total", rej, rules.Checksum)
	forged := proto.Clone(man).(*fdxv1.TransferManifest)
	forged.Sha256[0] ^= 1
	_, rej = digest([]int{0, 1, 2}, chunk).Check(forged)
	wantReason(t, "a forged SHA-256", rej, rules.Checksum)
	other := proto.Clone(man).(*fdxv1.TransferManifest)
	other.ChunkCount = 2
	_, rej = digest([]int{0, 1, 2}, chunk).Check(other)
	wantReason(t, "a manifest of another count", rej, rules.Checksum)
}
