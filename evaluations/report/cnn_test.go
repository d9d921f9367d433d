package main

import (
	"strings"
	"testing"
)

func TestRenderCNN(t *testing.T) {
	const rec = `{"kind": "python-cnn", "command": "python cnn_jax.py --clients 100", "aggregator_command": "aggregator --model cnn",
 "target_accuracy": 0.99, "rounds_to_target": 2, "paper_rounds_to_target": 20, "initial_accuracy": 0.1, "total_ms": 9000,
 "rounds": [{"round": 1, "accuracy": 0.95, "duration_ms": 4000, "clients_s": 3, "train_s": 2, "clients": 10},
            {"round": 2, "accuracy": 0.9912, "duration_ms": 5000, "clients_s": 4, "train_s": 3, "clients": 10}]}`
	got, err := renderCNN([]byte(rec))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"aggregator --model cnn\npython cnn_jax.py --clients 100\n",
		"| 0.99 | 2 | 20 | 4.5 s | 3.5 s | 2.5 s |",
		"| 0 | 0.1000 | 0.9500 | 0.9912 |  |  |  |  |  |  |  |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("render lacks %q:\n%s", want, got)
		}
	}
	missed := strings.Replace(rec, `"rounds_to_target": 2`, `"rounds_to_target": null`, 1)
	got, err = renderCNN([]byte(missed))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "| not reached in 2 rounds |") {
		t.Errorf("a run short of the target renders as:\n%s", got)
	}
	if _, err := renderCNN([]byte(`{"kind": "python-cnn", "rounds_to_target": null, "rounds": []}`)); err == nil {
		t.Error("a record without rounds rendered")
	}
}
