package model

import (
	"context"
	"testing"
)

func benchmarkTrain(b *testing.B, kind string, examples int) {
	set := randomSet(1, examples, 784, 10)
	n := mustNew(b, kind, 784, 10, 1)
	opt := TrainOptions{LearningRate: 0.01, BatchSize: 10, Epochs: 1, Seed: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := n.Train(context.Background(), set, opt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(examples)*float64(b.N)/b.Elapsed().Seconds(), "examples/s")
}

// BenchmarkTrainLogreg is one epoch over 6000 MNIST-sized examples, batch 10.
func BenchmarkTrainLogreg(b *testing.B) { benchmarkTrain(b, KindLogReg, 6000) }

// BenchmarkTrain2NN is one epoch over 600 MNIST-sized examples, batch 10:
// one client's shard when 60000 examples are split over 100 clients.
func BenchmarkTrain2NN(b *testing.B) { benchmarkTrain(b, Kind2NN, 600) }

// BenchmarkEvaluate2NN evaluates the 2NN on an MNIST-test-sized set.
func BenchmarkEvaluate2NN(b *testing.B) {
	const examples = 10000
	set := randomSet(1, examples, 784, 10)
	n := mustNew(b, Kind2NN, 784, 10, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := n.Evaluate(set); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(examples)*float64(b.N)/b.Elapsed().Seconds(), "examples/s")
}
