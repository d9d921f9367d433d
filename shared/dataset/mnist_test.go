package dataset

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/fstest"
)

func TestLoadMNIST(t *testing.T) {
	c := NewCatalog()
	for _, tc := range []struct {
		split     string
		n         int
		first     uint8
		perClass  [10]int
		firstSums int // Sum of the first image's pixels.
	}{
		// Class counts and first labels as published with MNIST.
		{SplitTrain, 60000, 5, [10]int{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}, 27525},
		{SplitTest, 10000, 7, [10]int{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}, 18454},
	} {
		t.Run(tc.split, func(t *testing.T) {
			s, err := c.Load(NameMNIST, tc.split)
			if err != nil {
				t.Fatalf("Load(%q, %q) = %v", NameMNIST, tc.split, err)
			}
			if s.Len() != tc.n || s.Dim != 784 || s.Classes != 10 || len(s.Pixels) != tc.n*784 {
				t.Fatalf("Len, Dim, Classes, len(Pixels) = %d, %d, %d, %d, want %d, 784, 10, %d",
					s.Len(), s.Dim, s.Classes, len(s.Pixels), tc.n, tc.n*784)
			}
			if s.Labels[0] != tc.first {
				t.Errorf("first label %d, want %d", s.Labels[0], tc.first)
			}
			var counts [10]int
			for i, l := range s.Labels {
				if l >= 10 {
					t.Fatalf("label %d of example %d out of range", l, i)
				}
				counts[l]++
			}
			if counts != tc.perClass {
				t.Errorf("examples per class %v, want %v", counts, tc.perClass)
			}
			sum := 0
			for _, p := range s.Pixels[:784] {
				sum += int(p)
			}
			if sum != tc.firstSums {
				t.Errorf("sum of the first image's pixels %d, want %d", sum, tc.firstSums)
			}
			// MNIST digits are centred in a 20x20 box: the top row is blank.
			for j, p := range s.Pixels[:28] {
				if p != 0 {
					t.Errorf("pixel (0, %d) of the first image = %d, want 0", j, p)
				}
			}
			again, err := c.Load(NameMNIST, tc.split)
			if err != nil || again != s {
				t.Errorf("second Load = %p, %v, want the cached %p", again, err, s)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	c := NewCatalog()
	for _, tc := range []struct{ name, split, want string }{
		{"cifar", SplitTrain, `unknown dataset "cifar"`},
		{NameMNIST, "validation", `unknown split "validation"`},
		{NameSynthetic, "", `unknown split ""`},
	} {
		if _, err := c.Load(tc.name, tc.split); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q, %q) = %v, want error containing %q", tc.name, tc.split, err, tc.want)
		}
	}
}

func TestLoadSynthetic(t *testing.T) {
	c := NewCatalog()
	train, err := c.Load(NameSynthetic, SplitTrain)
	if err != nil {
		t.Fatal(err)
	}
	test, err := c.Load(NameSynthetic, SplitTest)
	if err != nil {
		t.Fatal(err)
	}
	if train.Len() != SyntheticTrainLen || test.Len() != SyntheticTestLen ||
		train.Dim != SyntheticDim || train.Classes != SyntheticClasses {
		t.Fatalf("train %d x %d in %d classes, test %d, want %d x %d in %d, %d",
			train.Len(), train.Dim, train.Classes, test.Len(),
			SyntheticTrainLen, SyntheticDim, SyntheticClasses, SyntheticTestLen)
	}
	want := Synthetic(SyntheticTrainLen+SyntheticTestLen, SyntheticDim, SyntheticClasses, SyntheticSeed)
	if !bytes.Equal(train.Labels, want.Labels[:SyntheticTrainLen]) ||
		!bytes.Equal(test.Pixels, want.Pixels[SyntheticTrainLen*SyntheticDim:]) {
		t.Error("catalog synthetic splits are not the two ends of Synthetic(train+test, ...)")
	}
	// A fresh catalog, like another process of the federation, sees the
	// same data.
	other, err := NewCatalog().Load(NameSynthetic, SplitTrain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(other.Pixels, train.Pixels) {
		t.Error("two catalogs load different synthetic data")
	}
	if err := train.Validate(); err != nil {
		t.Error(err)
	}
	if err := test.Validate(); err != nil {
		t.Error(err)
	}
}

// idxFile returns an unsigned-byte IDX file with the given magic, dimensions
// and data.
func idxFile(magic uint32, dims []uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magic)
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, d)
	}
	return append(b, data...)
}

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadIDX(t *testing.T) {
	pixels := []byte{0, 7, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9} // Two 2x3 images.
	want := []int{2, 2, 3}
	valid := idxFile(idxMagicImages, []uint32{2, 2, 3}, pixels)

	got, err := readIDX(bytes.NewReader(valid), idxMagicImages, want)
	if err != nil || !bytes.Equal(got, pixels) {
		t.Fatalf("readIDX(valid) = %v, %v, want %v", got, err, pixels)
	}

	for _, tc := range []struct {
		name  string
		input []byte
		want  string
	}{
		{"empty", nil, "magic number"},
		{"labels magic", idxFile(idxMagicLabels, []uint32{2, 2, 3}, pixels), "bad magic number 2049"},
		{"type float", idxFile(0x0d03, []uint32{2, 2, 3}, pixels), "bad magic number"},
		{"truncated header", valid[:10], "dimensions: unexpected EOF"},
		{"truncated data", valid[:len(valid)-1], "got 11 of 12 bytes"},
		{"header only", valid[:16], "got 0 of 12 bytes"},
		{"wrong count", idxFile(idxMagicImages, []uint32{3, 2, 3}, append(pixels, pixels[:6]...)), "dimensions [3 2 3], want [2 2 3]"},
		{"wrong size", idxFile(idxMagicImages, []uint32{2, 3, 2}, pixels), "dimensions [2 3 2]"},
		{"huge count", idxFile(idxMagicImages, []uint32{0xffffffff, 0xffffffff, 0xffffffff}, nil), "dimensions"},
		{"trailing data", append(bytes.Clone(valid), 0), "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readIDX(bytes.NewReader(tc.input), idxMagicImages, want)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("readIDX = %v, want error containing %q", err, tc.want)
			}
		})
	}

	if _, err := readIDX(bytes.NewReader(valid[:20]), idxMagicImages, want); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("readIDX(truncated) = %v, want an error wrapping io.ErrUnexpectedEOF", err)
	}
}

// TestLoadMNISTCorrupt feeds loadMNIST small, deliberately broken file sets.
func TestLoadMNISTCorrupt(t *testing.T) {
	const n = 3
	split := mnistSplit{images: "img.gz", labels: "lbl.gz", count: n}
	images := idxFile(idxMagicImages, []uint32{n, 28, 28}, bytes.Repeat([]byte{9}, n*784))
	labels := idxFile(idxMagicLabels, []uint32{n}, []byte{5, 0, 9})
	good := fstest.MapFS{
		"img.gz": {Data: gzipped(t, images)},
		"lbl.gz": {Data: gzipped(t, labels)},
	}
	set, err := loadMNIST(good, split)
	if err != nil {
		t.Fatalf("loadMNIST(valid) = %v", err)
	}
	if !bytes.Equal(set.Labels, []byte{5, 0, 9}) || set.Len() != n || set.Dim != 784 {
		t.Fatalf("loadMNIST(valid) = %d examples of dim %d with labels %v", set.Len(), set.Dim, set.Labels)
	}

	badCRC := gzipped(t, images)
	badCRC[len(badCRC)-8] ^= 0xff // The CRC-32 precedes the 4-byte length.
	fullGzip := gzipped(t, images)

	for _, tc := range []struct {
		name           string
		images, labels []byte
		want           string
	}{
		{"missing labels", gzipped(t, images), nil, "lbl.gz"},
		{"not gzip", images, labels, "gzip"},
		{"bad checksum", badCRC, gzipped(t, labels), "checksum"},
		{"truncated gzip", fullGzip[:len(fullGzip)/2], gzipped(t, labels), "unexpected EOF"},
		{"label out of range", gzipped(t, images),
			gzipped(t, idxFile(idxMagicLabels, []uint32{n}, []byte{5, 10, 9})), "label 10 of example 1"},
		{"label count", gzipped(t, images),
			gzipped(t, idxFile(idxMagicLabels, []uint32{n + 1}, []byte{5, 0, 9, 1})), "dimensions [4], want [3]"},
		{"image size", gzipped(t, idxFile(idxMagicImages, []uint32{n, 27, 29}, bytes.Repeat([]byte{9}, n*783))),
			gzipped(t, labels), "dimensions [3 27 29]"},
		{"swapped files", gzipped(t, labels), gzipped(t, images), "bad magic number 2049"},
		{"garbage after gzip", append(gzipped(t, images), 'x'), gzipped(t, labels), "end of file"},
		{"second gzip member", append(gzipped(t, images), gzipped(t, []byte{1})...), gzipped(t, labels), "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := fstest.MapFS{"img.gz": {Data: tc.images}}
			if tc.labels != nil {
				fsys["lbl.gz"] = &fstest.MapFile{Data: tc.labels}
			}
			set, err := loadMNIST(fsys, split)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("loadMNIST = %v, %v, want error containing %q", set, err, tc.want)
			}
		})
	}
}

// TestLoadMNISTNeverPanics truncates and corrupts a valid gzip IDX file at
// every byte: the loader must return an error or valid data, never panic.
func TestLoadMNISTNeverPanics(t *testing.T) {
	labels := gzipped(t, idxFile(idxMagicLabels, []uint32{4}, []byte{1, 2, 3, 4}))
	dims := []int{4}
	for i := range labels {
		if _, err := decodeGzipIDX(bytes.NewReader(labels[:i]), idxMagicLabels, dims); err == nil {
			t.Errorf("decoding the first %d of %d bytes succeeded", i, len(labels))
		}
		corrupt := bytes.Clone(labels)
		corrupt[i] ^= 0x55
		// Some flips (in the gzip header's mtime, say) are harmless;
		// what matters is that none panics.
		_, _ = decodeGzipIDX(bytes.NewReader(corrupt), idxMagicLabels, dims)
	}
}

func FuzzReadIDX(f *testing.F) {
	f.Add(idxFile(idxMagicLabels, []uint32{3}, []byte{1, 2, 3}))
	f.Add(idxFile(idxMagicLabels, []uint32{4}, []byte{1, 2, 3}))
	f.Add([]byte{0, 0, 8, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		data, err := readIDX(bytes.NewReader(b), idxMagicLabels, []int{3})
		if err == nil && len(data) != 3 {
			t.Errorf("readIDX returned %d bytes and no error, want 3", len(data))
		}
	})
}
