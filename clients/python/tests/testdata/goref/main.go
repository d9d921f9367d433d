// Command goref prints, as JSON, what the Go packages compute for inputs
// the Python client's tests also compute from: sample hashes, shard
// indices, partitions of MNIST, client seeds and tensor encodings. The
// tests compare the two, so that the Python client follows the Go rules
// and not a copy of them that drifted.
//
//	go run ./clients/python/tests/testdata/goref
//
// It lives under testdata so that ./... patterns skip it: it is the Python
// tests' helper, not a package of the module (test_rules.py builds it).
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/fdxkafka/fdxkafka/client/participant"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

type sample struct {
	Seed     uint64 `json:"seed"`
	Round    int64  `json:"round"`
	Role     string `json:"role"`
	ClientID string `json:"client_id"`
	Hash     string `json:"hash"` // decimal: JSON numbers lose uint64 precision
}

type shard struct {
	Scheme   string `json:"scheme"`
	Parts    int    `json:"num_partitions"`
	Seed     uint64 `json:"seed"`
	ClientID string `json:"client_id"`
	Index    int    `json:"index"`
	Size     int    `json:"size"`
	First    []int  `json:"first"`
	IndexSum int    `json:"index_sum"`
}

type encoded struct {
	Dtype  string    `json:"dtype"`
	Values []float32 `json:"values"`
	Data   []byte    `json:"data"`
	Scale  float32   `json:"scale"`
}

type seed struct {
	JobSeed  uint64 `json:"job_seed"`
	ClientID string `json:"client_id"`
	Round    int64  `json:"round"`
	Seed     string `json:"seed"`
}

type out struct {
	Samples   []sample  `json:"samples"`
	Shards    []shard   `json:"shards"`
	Encodings []encoded `json:"encodings"`
	Seeds     []seed    `json:"seeds"`
	// HeldOut are the positions Holdout(0.2) holds out of 600 examples.
	HeldOut []int `json:"held_out"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "goref:", err)
		os.Exit(1)
	}
}

func run() error {
	var o out
	for _, id := range []string{"0", "3", "17", "client-a", "ü"} {
		for _, role := range []string{rules.RoleFit, rules.RoleEvaluate} {
			h := rules.SampleHash(42, 7, role, id)
			o.Samples = append(o.Samples, sample{42, 7, role, id, fmt.Sprint(h)})
		}
	}
	cat := dataset.NewCatalog()
	train, err := cat.Load("mnist", dataset.SplitTrain)
	if err != nil {
		return err
	}
	specs := []dataset.PartitionSpec{
		{Scheme: dataset.SchemeIID, NumPartitions: 5, Seed: 1},
		{Scheme: dataset.SchemeIID, NumPartitions: 100, Seed: 9},
		{Scheme: dataset.SchemeShards, NumPartitions: 10, Seed: 3, ShardsPerClient: 2},
	}
	for _, sp := range specs {
		parts, err := dataset.Partition(train.Labels, train.Classes, sp)
		if err != nil {
			return err
		}
		for _, id := range []string{"3", "4", "client-a"} {
			k := dataset.ShardIndex(id, sp.NumPartitions)
			idx := parts[k]
			sum := 0
			for _, i := range idx {
				sum += i
			}
			o.Shards = append(o.Shards, shard{sp.Scheme, sp.NumPartitions, sp.Seed, id, k, len(idx), idx[:10], sum})
		}
	}
	// Holdout on a set whose pixels are each example's position.
	n := 600
	pos := &dataset.Set{Pixels: make([]uint8, 2*n), Labels: make([]uint8, n), Dim: 2, Classes: 1}
	for i := range n {
		pos.Pixels[2*i], pos.Pixels[2*i+1] = uint8(i), uint8(i>>8)
	}
	_, held, err := dataset.Holdout(pos, 0.2)
	if err != nil {
		return err
	}
	for i := range held.Len() {
		o.HeldOut = append(o.HeldOut, int(held.Pixels[2*i])|int(held.Pixels[2*i+1])<<8)
	}
	values := []float32{0, 1, -1, 0.1, -0.3333, 65504, 70000, -1e9, 1e-6, 6e-8, 3.14159, 2.5e-5, 0.5, -0.5}
	spec := []tensor.Spec{{Name: "t", Shape: []int64{int64(len(values))}}}
	for _, dt := range []fdxv1.DType{fdxv1.DType_DTYPE_FLOAT16, fdxv1.DType_DTYPE_INT8} {
		ts, err := tensor.EncodeAs([][]float32{values}, spec, dt)
		if err != nil {
			return err
		}
		o.Encodings = append(o.Encodings, encoded{dt.String(), values, ts[0].GetData(), ts[0].GetScale()})
	}
	sparse, err := (&tensor.Residual{}).EncodeTopK([][]float32{append([]float32(nil), values...)}, spec, 0.3)
	if err != nil {
		return err
	}
	o.Encodings = append(o.Encodings, encoded{"DTYPE_SPARSE_FLOAT32", values, sparse[0].GetData(), 0})
	for _, id := range []string{"0", "client-a"} {
		o.Seeds = append(o.Seeds, seed{1, id, 3, fmt.Sprint(participant.Seed(1, id, 3))})
	}
	return json.NewEncoder(os.Stdout).Encode(o)
}
