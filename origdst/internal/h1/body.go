package h1

import (
	"bytes"
)

// Bounds of a chunked body's framing.
const (
	maxChunkLine = 4096 // a chunk-size line, extensions included; a trailer line
	maxTrailers  = MaxHeaders
)

// SegmentKind says what a ChunkScanner found.
type SegmentKind uint8

// Segment kinds.
const (
	// SegNone: framing bytes consumed (a trailer line), nothing to act
	// on.
	SegNone SegmentKind = iota
	// SegSize: a chunk-size line; Segment.Size is the chunk's size (0:
	// the last chunk, trailers follow).
	SegSize
	// SegData: chunk data, Segment.Data (a view of the input).
	SegData
	// SegEnd: the body's end (the empty line after the trailers).
	SegEnd
	// SegChunkEnd: the CRLF that ends a chunk's data.
	SegChunkEnd
)

// Segment is one step of a ChunkScanner.
type Segment struct {
	Kind SegmentKind
	Size int64
	Data []byte
}

// ChunkScanner frames a chunked body (RFC 9112 7.1) as its bytes arrive,
// strictly: chunk sizes in hex without sign or leading space, at most 15
// digits; extensions (after ';') of visible characters only; data
// followed by CRLF; trailer fields parsed as header fields (and not kept:
// realipd forwards no request trailers); CRLF line ends only. Its zero
// value is ready at the body's start.
type ChunkScanner struct {
	state    uint8
	left     int64 // data bytes left in the current chunk
	trailers int
}

const (
	csSize     = iota // expecting a chunk-size line
	csData            // in chunk data
	csDataCRLF        // expecting the CRLF after data
	csTrailer         // expecting a trailer line or the final CRLF
	csDone
)

// Done reports whether the body has ended.
func (s *ChunkScanner) Done() bool { return s.state == csDone }

// Next scans the start of b. It returns how many bytes it consumed and
// what they were; n == 0 with a nil error means that b holds no whole
// line yet (read more; a line is at most 4 KiB). Data segments are views
// of b. After SegEnd it consumes nothing more.
func (s *ChunkScanner) Next(b []byte) (n int, seg Segment, err error) {
	switch s.state {
	case csDone:
		return 0, Segment{Kind: SegEnd}, nil
	case csData:
		if len(b) == 0 {
			return 0, Segment{}, nil
		}
		k := int64(len(b))
		if k > s.left {
			k = s.left
		}
		s.left -= k
		if s.left == 0 {
			s.state = csDataCRLF
		}
		return int(k), Segment{Kind: SegData, Data: b[:k]}, nil
	case csDataCRLF:
		if len(b) < 2 {
			return 0, Segment{}, nil
		}
		if b[0] != '\r' || b[1] != '\n' {
			return 0, Segment{}, refuse(400, "chunk data not followed by CRLF")
		}
		s.state = csSize
		return 2, Segment{Kind: SegChunkEnd}, nil
	}
	line, n, err := nextLine(b)
	if err != nil || n == 0 {
		return 0, Segment{}, err
	}
	if s.state == csSize {
		size, err := parseChunkSize(line)
		if err != nil {
			return 0, Segment{}, err
		}
		if size == 0 {
			s.state = csTrailer
		} else {
			s.state, s.left = csData, size
		}
		return n, Segment{Kind: SegSize, Size: size}, nil
	}
	// csTrailer
	if len(line) == 0 {
		s.state = csDone
		return n, Segment{Kind: SegEnd}, nil
	}
	s.trailers++
	if s.trailers > maxTrailers {
		return 0, Segment{}, refuse(400, "too many trailer fields")
	}
	if _, err := parseField(line); err != nil {
		return 0, Segment{}, err
	}
	return n, Segment{Kind: SegNone}, nil
}

// nextLine returns the first CRLF-terminated line of b (without its CRLF)
// and its length with the CRLF; n == 0 when b holds none yet.
func nextLine(b []byte) (line []byte, n int, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) > maxChunkLine {
			return nil, 0, refuse(400, "chunk framing line too long")
		}
		if bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
			return nil, 0, refuse(400, "bare CR")
		}
		return nil, 0, nil
	}
	if i == 0 || b[i-1] != '\r' {
		return nil, 0, refuse(400, "bare LF")
	}
	if i > maxChunkLine {
		return nil, 0, refuse(400, "chunk framing line too long")
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, 0, refuse(400, "bare CR")
	}
	return line, i + 1, nil
}

// parseChunkSize parses "1*HEXDIG [ ; ext ]".
func parseChunkSize(line []byte) (int64, error) {
	digits := line
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		digits = line[:i]
		for _, c := range line[i:] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return 0, refuse(400, "invalid chunk extension")
			}
		}
		// RFC 9112 allows whitespace before the ';'.
		digits = trimOWS(digits)
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, refuse(400, "invalid chunk size")
	}
	var n int64
	for _, c := range digits {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, refuse(400, "invalid chunk size")
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// Response is a parsed response head; its slices view the parsed buffer.
type Response struct {
	Minor   int
	Status  int
	Headers []Header
	HeadLen int
	// ContentLength frames the body when >= 0.
	ContentLength int64
	Chunked       bool
	// KeepAlive: the upstream keeps the connection after this response.
	KeepAlive bool
}

// ParseResponse parses the response head at the start of b, as
// ParseRequest parses a request's (the same bounds and strictness); a
// response framed two ways (Content-Length and Transfer-Encoding) is
// refused.
func ParseResponse(b []byte, r *Response) error {
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		if len(b) >= MaxHeadBytes {
			return refuse(502, "response header fields too large")
		}
		return ErrIncomplete
	}
	*r = Response{Headers: r.Headers[:0], HeadLen: end + 4, ContentLength: -1}
	line, rest := cutLine(b[:end+2])
	// HTTP/1.x SP 3DIGIT SP reason
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return refuse(502, "malformed status line")
	}
	r.Minor = int(line[7] - '0')
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return refuse(502, "malformed status line")
		}
		r.Status = r.Status*10 + int(c-'0')
	}
	if r.Status < 100 {
		return refuse(502, "malformed status line")
	}
	clSeen, teSeen, connClose, connKeepAlive := 0, 0, false, false
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		if len(r.Headers) == MaxHeaders {
			return refuse(502, "too many response header fields")
		}
		h, err := parseField(line)
		if err != nil {
			return refuse(502, "malformed response header field")
		}
		r.Headers = append(r.Headers, h)
		switch {
		case equalFold(h.Name, hContentLength):
			n, ok := parseLength(h.Value)
			if !ok || clSeen > 0 && n != r.ContentLength {
				return refuse(502, "invalid response Content-Length")
			}
			r.ContentLength = n
			clSeen++
		case equalFold(h.Name, hTransferEncoding):
			teSeen++
			if teSeen > 1 || !equalFold(h.Value, []byte("chunked")) {
				return refuse(502, "unsupported response transfer encoding")
			}
			r.Chunked = true
		case equalFold(h.Name, hConnection):
			forEachToken(h.Value, func(tok []byte) {
				switch {
				case equalFold(tok, []byte("close")):
					connClose = true
				case equalFold(tok, []byte("keep-alive")):
					connKeepAlive = true
				}
			})
		}
	}
	if r.Chunked && clSeen > 0 {
		return refuse(502, "response Content-Length with Transfer-Encoding")
	}
	if r.Minor == 1 {
		r.KeepAlive = !connClose
	} else {
		r.KeepAlive = connKeepAlive && !connClose
	}
	return nil
}

// Framing is how a response body is delimited.
type Framing uint8

// Response body framings.
const (
	FramingNone    Framing = iota // no body
	FramingLength                 // Content-Length bytes
	FramingChunked                // chunked
	FramingClose                  // until the upstream closes
)

// BodyFraming says how the body of r, the response to a request with
// method head (HEAD or not), is delimited (RFC 9112 6.3).
func (r *Response) BodyFraming(head bool) Framing {
	switch {
	case head, r.Status < 200, r.Status == 204, r.Status == 304:
		return FramingNone
	case r.Chunked:
		return FramingChunked
	case r.ContentLength >= 0:
		return FramingLength
	}
	return FramingClose
}
