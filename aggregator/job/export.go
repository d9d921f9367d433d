package job

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Output is the --out file: the run's history and its final model.
type Output struct {
	*Result
	Final *FinalModel `json:"final_model"`
}

// FinalModel is the final global model in JSON.
type FinalModel struct {
	Round   int64              `json:"round"`
	Metrics map[string]float64 `json:"metrics"`
	// SHA256 is over the tensors' raw bytes in order: equal digests mean
	// bit-identical models.
	SHA256  string        `json:"sha256"`
	Tensors []TensorValue `json:"tensors"`
}

// TensorValue is one parameter array.
type TensorValue struct {
	Name   string    `json:"name"`
	Shape  []int64   `json:"shape"`
	Values []float32 `json:"values"`
}

// Export prepares res for JSON.
func Export(res *Result) (*Output, error) {
	out := &Output{Result: res}
	if res.Result == nil || res.Final == nil {
		return out, nil
	}
	f := &FinalModel{Round: res.Final.GetRound(), Metrics: res.Final.GetMetrics(), SHA256: Digest(res.Final)}
	for _, t := range res.Final.GetParams() {
		v, err := tensor.Float32s(nil, t)
		if err != nil {
			return nil, fmt.Errorf("export final model: %w", err)
		}
		f.Tensors = append(f.Tensors, TensorValue{Name: t.GetName(), Shape: t.GetShape(), Values: v})
	}
	out.Final = f
	return out, nil
}

// Digest hashes a model's parameters (names, shapes, raw bytes).
func Digest(m *fdxv1.GlobalModel) string {
	h := sha256.New()
	for _, t := range m.GetParams() {
		fmt.Fprintf(h, "%s%v%d;", t.GetName(), t.GetShape(), t.GetDtype())
		h.Write(t.GetData())
	}
	return hex.EncodeToString(h.Sum(nil))
}
