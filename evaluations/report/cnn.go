package main

import (
	"encoding/json"
	"fmt"
	"strings"
)

// cnnRun is the record clients/python/examples/cnn_jax.py writes: Python
// clients training the FedAvg paper's CNN under the Go aggregator.
type cnnRun struct {
	Kind              string   `json:"kind"`
	Command           string   `json:"command"`
	AggregatorCommand string   `json:"aggregator_command"`
	Target            float64  `json:"target_accuracy"`
	RoundsToTarget    *int     `json:"rounds_to_target"`
	PaperRounds       int      `json:"paper_rounds_to_target"`
	InitialAccuracy   *float64 `json:"initial_accuracy"`
	TotalMS           *float64 `json:"total_ms"`
	Rounds            []struct {
		Round      int      `json:"round"`
		Accuracy   *float64 `json:"accuracy"`
		DurationMS *float64 `json:"duration_ms"`
		ClientsS   float64  `json:"clients_s"`
		TrainS     float64  `json:"train_s"`
		Clients    int      `json:"clients"`
	} `json:"rounds"`
}

// renderCNN renders a cnnRun: rounds to the target next to the paper's,
// the time a round took, and the accuracy curve.
func renderCNN(raw []byte) (string, error) {
	var r cnnRun
	if err := json.Unmarshal(raw, &r); err != nil {
		return "", err
	}
	if len(r.Rounds) == 0 {
		return "", fmt.Errorf("python-cnn record has no rounds")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "```\n%s\n%s\n```\n\n", r.AggregatorCommand, r.Command)
	reached := fmt.Sprintf("not reached in %d rounds", len(r.Rounds))
	if r.RoundsToTarget != nil {
		reached = fmt.Sprint(*r.RoundsToTarget)
	}
	var dur, clients, train float64
	nd := 0
	for _, x := range r.Rounds {
		if x.DurationMS != nil {
			dur += *x.DurationMS
			nd++
		}
		clients += x.ClientsS
		train += x.TrainS
	}
	n := float64(len(r.Rounds))
	meanRound := "–"
	if nd > 0 {
		meanRound = fmt.Sprintf("%.1f s", dur/float64(nd)/1000)
	}
	b.WriteString("| target test accuracy | rounds to target, this run | the FedAvg paper | mean round (aggregator) | clients' part of a round | of which training |\n|--:|--:|--:|--:|--:|--:|\n")
	fmt.Fprintf(&b, "| %.2f | %s | %d | %s | %.1f s | %.1f s |\n\n", r.Target, reached, r.PaperRounds, meanRound, clients/n, train/n)
	b.WriteString("Test accuracy of the global model after each round (MNIST's 10,000 test images, evaluated by the aggregator; round 0 is the initial model):\n\n")
	acc := map[int]string{}
	last := 0
	if r.InitialAccuracy != nil {
		acc[0] = fmt.Sprintf("%.4f", *r.InitialAccuracy)
	}
	for _, x := range r.Rounds {
		acc[x.Round] = "–"
		if x.Accuracy != nil {
			acc[x.Round] = fmt.Sprintf("%.4f", *x.Accuracy)
		}
		last = max(last, x.Round)
	}
	b.WriteString("| rounds |")
	for j := range 10 {
		fmt.Fprintf(&b, " +%d |", j)
	}
	b.WriteString("\n|--:|" + strings.Repeat("--:|", 10) + "\n")
	for lo := 0; lo <= last; lo += 10 {
		fmt.Fprintf(&b, "| %d |", lo)
		for j := range 10 {
			v, ok := acc[lo+j]
			if !ok {
				v = ""
			}
			fmt.Fprintf(&b, " %s |", v)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}
