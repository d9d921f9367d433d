package strategy

import (
	"errors"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
)

// TestStreamRoundRefusals: an update that ends short fails, and the round
// the stream belongs to then refuses to finish; a median round does not
// stream.
func TestStreamRoundRefusals(t *testing.T) {
	fa, err := New(Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	rd, err := fa.Begin([][]float32{make([]float32, 10)})
	if err != nil {
		t.Fatal(err)
	}
	sr := rd.(StreamRound)
	if !sr.Streams() {
		t.Fatal("a FedAvg round does not stream")
	}
	if err := rd.Add(Update{ClientID: "a", NumExamples: 1, Params: [][]float32{make([]float32, 10)}}); err != nil {
		t.Fatal(err)
	}
	f, err := sr.BeginStream("b", 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fold(0, 0, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	if err := f.End(); !errors.Is(err, accumulator.ErrPartialFold) {
		t.Errorf("short update: End = %v", err)
	}
	if _, err := rd.Finish(); !errors.Is(err, accumulator.ErrPartialFold) {
		t.Errorf("Finish after a partial fold = %v, want accumulator.ErrPartialFold", err)
	}
	robust, err := New(Config{Name: "median"})
	if err != nil {
		t.Fatal(err)
	}
	mr, err := robust.Begin([][]float32{make([]float32, 10)})
	if err != nil {
		t.Fatal(err)
	}
	if mr.(StreamRound).Streams() {
		t.Error("a median round claims to stream")
	}
}

// TestStreamAbort: a fold given up mid-way breaks its round.
func TestStreamAbort(t *testing.T) {
	fa, err := New(Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	rd, err := fa.Begin([][]float32{make([]float32, 600)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := rd.(StreamRound).BeginStream("a", 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fold(0, 0, make([]float32, 300)); err != nil {
		t.Fatal(err)
	}
	cause := errors.New("broker gone")
	if err := f.Abort(cause); !errors.Is(err, accumulator.ErrPartialFold) || !errors.Is(err, cause) {
		t.Errorf("Abort = %v", err)
	}
	if err := rd.Add(Update{ClientID: "b", NumExamples: 1, Params: [][]float32{make([]float32, 600)}}); !errors.Is(err, accumulator.ErrPartialFold) {
		t.Errorf("Add after Abort = %v", err)
	}
	if _, err := rd.Finish(); err == nil {
		t.Error("Finish after Abort succeeded")
	}
}
