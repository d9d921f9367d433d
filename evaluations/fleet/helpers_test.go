package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func testModel() *fdxv1.GlobalModel {
	return &fdxv1.GlobalModel{Job: "distinct", Round: 3, Params: []*fdxv1.Tensor{
		tensor.FromFloat32("w", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		tensor.FromFloat32("b", []int64{3}, []float32{0, 0.5, -1}),
	}}
}

func decodeUpdate(t *testing.T, b []byte) *fdxv1.Update {
	t.Helper()
	u := &fdxv1.Update{}
	if err := proto.Unmarshal(b, u); err != nil {
		t.Fatal(err)
	}
	return u
}
