package extproc

import (
	"sync"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// inFrame receives one serialized message into a buffer it reuses for the
// next message of its stream: views into b are valid only until then. lines
// and headers are the stream's scratch space for the header lines the
// decoder collects.
type inFrame struct {
	b       []byte
	lines   []string
	headers []rawHeader
}

// outFrame sends one serialized message as is: either b, which is never
// modified (the pre-built pass-through answers), or pooled, a buffer from
// mem.DefaultBufferPool that goes back to the pool once gRPC has written it.
type outFrame struct {
	b      []byte
	pooled *[]byte
}

// codec is the server's codec: raw frames pass through untouched (the ext_proc
// handler reads and writes wire format itself) and every other message —
// health, reflection — goes to gRPC's proto codec. Its name is "proto", so
// the content type on the wire is the standard application/grpc.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2(grpcproto.Name)} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*outFrame); ok {
		if f.pooled != nil {
			buf := f.pooled
			f.pooled = nil
			return mem.BufferSlice{mem.NewBuffer(buf, answerPool)}, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(f.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*inFrame); ok {
		n := data.Len()
		if cap(f.b) < n {
			f.b = make([]byte, n)
		}
		f.b = f.b[:n]
		data.CopyTo(f.b)
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (c codec) Name() string { return grpcproto.Name }

// answerBufSize is the capacity of pooled answer buffers: above gRPC's
// pooling threshold (1 KiB), so that mem.NewBuffer hands a buffer back to
// the pool once gRPC has written it, and above the size of a typical answer.
const answerBufSize = 2048

// bufferPool is a mem.BufferPool of answerBufSize buffers; larger requests
// get one-off buffers.
type bufferPool struct{ p sync.Pool }

// answerPool holds the buffers answers are encoded into.
var answerPool = &bufferPool{}

// Get returns a buffer of length n.
func (bp *bufferPool) Get(n int) *[]byte {
	if n > answerBufSize {
		b := make([]byte, n)
		return &b
	}
	if v, ok := bp.p.Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, answerBufSize)
	return &b
}

// Put returns a buffer from Get.
func (bp *bufferPool) Put(b *[]byte) {
	if cap(*b) == answerBufSize {
		bp.p.Put(b)
	}
}

var _ mem.BufferPool = (*bufferPool)(nil)
