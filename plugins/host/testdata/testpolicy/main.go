// Command testpolicy is a plugin for the host's tests. Its behaviour is
// chosen per request by the x-test header: "deny", "error", "hang" (blocks,
// ignoring the deadline), "crash" (exits mid-call); anything else allows.
// Decisions carry the process id, a per-process call counter and the
// configured tag in their metadata; the x-tenant header it received comes
// back as metadata (as given, and hex-encoded) and, when present, as the
// x-tenant-echo header.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/realipd/realipd/plugins/sdk"
)

type config struct {
	Tag      string       `json:"tag"`
	CacheTTL sdk.Duration `json:"cache_ttl"`
	IPOnly   bool         `json:"ip_only"`  // declare the client IP as the only input
	AllInput bool         `json:"all"`      // declare nothing: every input
	LogWarn  string       `json:"log_warn"` // logged at warn level during Configure
	Reject   string       `json:"reject"`   // reject the config with this message
	Trivial  bool         `json:"trivial"`  // allow at once with no effects (benchmarks)
	// HeadersFile names a file of header names, one a line, read at
	// Configure: the declared headers instead of x-test and x-tenant (tests
	// change it between restarts).
	HeadersFile string `json:"headers_file"`
}

type policy struct {
	cfg     config
	headers []string // declared headers
	calls   atomic.Int64
	pid     string
}

func (p *policy) Configure(_ context.Context, c sdk.Config) error {
	if err := c.Decode(&p.cfg); err != nil {
		return err
	}
	if p.cfg.Reject != "" {
		return errors.New(p.cfg.Reject)
	}
	p.headers = []string{"X-Test", "x-tenant"}
	if p.cfg.HeadersFile != "" {
		b, err := os.ReadFile(p.cfg.HeadersFile)
		if err != nil {
			return err
		}
		p.headers = strings.Fields(string(b))
	}
	if p.cfg.LogWarn != "" {
		sdk.Logger().Warn(p.cfg.LogWarn, "policy", c.PolicyName(), "answer", 42)
		fmt.Fprintln(os.Stdout, "printed: "+p.cfg.LogWarn)
	}
	return nil
}

func (p *policy) Inputs() sdk.Inputs {
	if p.cfg.AllInput {
		return sdk.Inputs{All: true}
	}
	if p.cfg.IPOnly {
		return sdk.Inputs{}
	}
	return sdk.Inputs{Headers: p.headers}
}

func (p *policy) Decide(ctx context.Context, req *sdk.Request) (sdk.Decision, error) {
	if p.cfg.Trivial {
		return sdk.Decision{}, nil
	}
	n := p.calls.Add(1)
	mode, _ := req.Header("x-test")
	switch mode {
	case "hang":
		select {} // ignores ctx on purpose
	case "crash":
		os.Exit(3)
	case "error":
		return sdk.Decision{}, errors.New("boom")
	}
	tenant, hasTenant := req.Header("x-tenant")
	d := sdk.Decision{
		Metadata: map[string]string{
			"pid":        p.pid,
			"calls":      strconv.FormatInt(n, 10),
			"tag":        p.cfg.Tag,
			"client_ip":  req.ClientIP.String(),
			"tenant":     tenant,
			"tenant_hex": hex.EncodeToString([]byte(tenant)),
			"peer":       req.Peer,
			"listener":   req.Listener,
		},
		Headers:  []sdk.Header{{Name: "x-policy", Value: "testpolicy"}},
		CacheTTL: p.cfg.CacheTTL.Duration,
	}
	if hasTenant {
		d.Headers = append(d.Headers, sdk.Header{Name: "x-tenant-echo", Value: tenant})
	}
	if mode == "deny" {
		d.Deny, d.Status, d.Body = true, 451, "nope"
	}
	return d, nil
}

func main() {
	p := &policy{pid: strconv.Itoa(os.Getpid())}
	sdk.Serve(p)
}
