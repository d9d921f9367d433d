package dataset

import (
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"io/fs"
)

// mnistFiles holds the four original MNIST files, gzip-compressed exactly as
// published, so that a deployed Cloud Function needs no download and a
// checksum of the files identifies the data. embed.FS is read-only, so
// sharing it package-wide is no mutable state.
//
//go:embed mnist/*.gz
var mnistFiles embed.FS

// MNIST geometry.
const (
	mnistRows       = 28
	mnistCols       = 28
	mnistDim        = mnistRows * mnistCols
	mnistClasses    = 10
	mnistTrainCount = 60000
	mnistTestCount  = 10000
)

// mnistSplit names the files and size of one MNIST split.
type mnistSplit struct {
	images, labels string
	count          int
}

// mnistSplitOf returns the files of split, SplitTrain or SplitTest.
func mnistSplitOf(split string) (mnistSplit, error) {
	switch split {
	case SplitTrain:
		return mnistSplit{"mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz", mnistTrainCount}, nil
	case SplitTest:
		return mnistSplit{"mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz", mnistTestCount}, nil
	default:
		return mnistSplit{}, fmt.Errorf("unknown split %q, want %q or %q", split, SplitTrain, SplitTest)
	}
}

// loadMNIST reads one split from fsys, which is mnistFiles outside tests.
func loadMNIST(fsys fs.FS, split mnistSplit) (*Set, error) {
	images, err := readGzipIDX(fsys, split.images, idxMagicImages, []int{split.count, mnistRows, mnistCols})
	if err != nil {
		return nil, err
	}
	labels, err := readGzipIDX(fsys, split.labels, idxMagicLabels, []int{split.count})
	if err != nil {
		return nil, err
	}
	set := &Set{Pixels: images, Labels: labels, Dim: mnistDim, Classes: mnistClasses}
	if err := set.Validate(); err != nil {
		return nil, fmt.Errorf("mnist %s: %w", split.labels, err)
	}
	return set, nil
}

// readGzipIDX reads the gzip-compressed IDX file name from fsys.
func readGzipIDX(fsys fs.FS, name string, magic uint32, dims []int) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("mnist: %w", err)
	}
	defer f.Close() // Read-only; a close error cannot lose data.
	data, err := decodeGzipIDX(f, magic, dims)
	if err != nil {
		return nil, fmt.Errorf("mnist %s: %w", name, err)
	}
	return data, nil
}

// decodeGzipIDX reads a gzip-compressed IDX stream.
func decodeGzipIDX(r io.Reader, magic uint32, dims []int) ([]byte, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, err // Already says "gzip: ...".
	}
	data, err := readIDX(zr, magic, dims)
	if err != nil {
		return nil, err
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("closing gzip stream: %w", err)
	}
	return data, nil
}
