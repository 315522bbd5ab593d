package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/realipd/realipd/plugins"
	policypb "github.com/realipd/realipd/plugins/proto"
)

// Defaults for the zero fields of Config.
const (
	DefaultTimeout        = 50 * time.Millisecond
	DefaultStartTimeout   = 5 * time.Second
	DefaultCacheSize      = 10000
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
)

// Errors wrapped by Decide's errors; test them with errors.Is.
var (
	// ErrUnavailable: the plugin is not running (crashed, restarting, closed)
	// or its connection broke during the call.
	ErrUnavailable = errors.New("plugin unavailable")
	// ErrTimeout: the plugin did not answer within the policy's timeout.
	ErrTimeout = errors.New("plugin timed out")
	// ErrPlugin: the plugin's Decide returned an error.
	ErrPlugin = errors.New("plugin returned an error")
)

// Config configures one plugin policy. The zero values of the optional
// fields take the defaults above.
type Config struct {
	Name     string         // the policies entry's name; required
	Path     string         // the plugin binary; relative paths are taken from the host's working directory
	SHA256   string         // hex sha256 of the binary; required
	Settings map[string]any // the entry's `config` map, handed to the plugin's Configure
	// Dir is the plugin process's working directory, so the directory
	// relative paths in Settings are taken from: realipd passes the
	// configuration file's directory. "": the host's working directory.
	Dir string

	Timeout  time.Duration // deadline of one Decide call (and of nothing else)
	CacheTTL time.Duration // upper bound on how long a decision is reused; 0 disables the cache
	// CacheSize bounds the number of cached decisions.
	CacheSize int

	Logger     *slog.Logger          // nil: logs are discarded
	Registerer prometheus.Registerer // nil: metrics are kept but not registered

	StartTimeout   time.Duration // start of the process up to an answered Configure
	HealthInterval time.Duration // between health pings
	HealthTimeout  time.Duration // deadline of one health ping
	MinBackoff     time.Duration // first delay before a restart
	MaxBackoff     time.Duration // cap of the doubling restart delay
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Timeout, DefaultTimeout)
	def(&c.StartTimeout, DefaultStartTimeout)
	def(&c.HealthInterval, DefaultHealthInterval)
	def(&c.HealthTimeout, DefaultHealthTimeout)
	def(&c.MinBackoff, DefaultMinBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Host is a plugins.Policy answered by a supervised plugin process. Create it
// with New; Close it when done.
type Host struct {
	cfg        Config
	path       string // absolute
	sum        []byte
	configJSON []byte
	log        *slog.Logger
	m          *metrics
	clock      func() time.Duration // a monotonic now for cache expiry; replaced in tests

	cur    atomic.Pointer[instance] // nil while the plugin is down
	inputs atomic.Pointer[inputs]
	cache  *lru.Cache[cacheKey, *cacheEntry] // nil when caching is off

	errUnavailable error // preallocated for the fail-fast path

	kick      chan struct{} // asks the supervisor to check health now
	closing   chan struct{}
	done      chan struct{} // closed when the supervisor has returned
	closeOnce sync.Once

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced at every up/down change
	restarts int
	counted  bool // this host's process is counted in realipd_plugin_up
}

type cacheKey struct {
	ip   netip.Addr
	rest string // the other declared inputs, encoded; "" when only the IP counts
}

type cacheEntry struct {
	d       plugins.Decision
	expires time.Duration // on h.clock
}

// New checks the binary (see Check), starts the plugin, configures it and
// starts supervising it. Errors name the policy and the plugin's path: a
// missing or non-executable file, a sha256 mismatch, a start-up failure or
// timeout, a protocol version mismatch, a rejected configuration.
func New(cfg Config) (*Host, error) {
	path, sum, err := checkBinary(cfg)
	if err != nil {
		return nil, err
	}
	cfg.setDefaults()
	settings := cfg.Settings
	if settings == nil {
		settings = map[string]any{}
	}
	configJSON, err := json.Marshal(settings)
	if err != nil {
		return nil, fmt.Errorf("host: policy %q: encode config: %w", cfg.Name, err)
	}
	h := &Host{
		cfg:            cfg,
		path:           path,
		sum:            sum,
		configJSON:     configJSON,
		log:            cfg.Logger.With("policy", cfg.Name, "plugin", path),
		m:              newMetrics(cfg.Registerer, cfg.Name),
		errUnavailable: fmt.Errorf("host: policy %q: %w", cfg.Name, ErrUnavailable),
		kick:           make(chan struct{}, 1),
		closing:        make(chan struct{}),
		done:           make(chan struct{}),
		changed:        make(chan struct{}),
	}
	if cfg.CacheTTL > 0 {
		h.cache, err = lru.New[cacheKey, *cacheEntry](cfg.CacheSize)
		if err != nil {
			return nil, fmt.Errorf("host: policy %q: decision cache: %w", cfg.Name, err)
		}
		clock.acquire()
		h.clock = clock.read
	}
	inst, in, err := h.start()
	if err != nil {
		if h.cache != nil {
			clock.release()
		}
		return nil, err
	}
	h.inputs.Store(in)
	h.setUp(inst, false)
	go h.supervise()
	return h, nil
}

// Name returns the policy's name.
func (h *Host) Name() string { return h.cfg.Name }

// Up reports whether the plugin is running and connected.
func (h *Host) Up() bool { return h.cur.Load() != nil }

// RequestHeaders implements plugins.HeaderInputs from the inputs the plugin
// declared when it was configured: the lower-case names of the request
// headers it reads, or all when it reads every one (it declared all, or
// declared nothing). After a restart it reflects what the new process
// declared. It does not allocate.
func (h *Host) RequestHeaders() (names []string, all bool) {
	in := h.inputs.Load()
	if in == nil {
		return nil, false
	}
	return in.headers, in.all
}

// Decide implements plugins.Policy. A cached decision is returned without
// calling the plugin; the returned Decision's Headers and Metadata are then
// shared and must not be modified. Otherwise the plugin is called with the
// policy's timeout. Errors wrap ErrUnavailable, ErrTimeout or ErrPlugin, or
// are ctx's own error; the caller applies the policy's on_error.
func (h *Host) Decide(ctx context.Context, req *plugins.Request) (plugins.Decision, error) {
	in := h.inputs.Load()
	var key cacheKey
	if h.cache != nil {
		key = in.key(req)
		if e, ok := h.cache.Get(key); ok {
			if h.clock() < e.expires {
				h.m.hits.Inc()
				return e.d, nil
			}
			h.cache.Remove(key)
		}
		h.m.misses.Inc()
	}
	inst := h.cur.Load()
	if inst == nil {
		h.m.errUnavailable.Inc()
		return plugins.Decision{}, h.errUnavailable
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	resp, err := inst.rpc.Decide(cctx, in.request(req))
	if err != nil {
		return plugins.Decision{}, h.callError(ctx, err)
	}
	d := decisionFromProto(resp)
	if h.cache != nil && d.CacheTTL > 0 {
		h.cache.Add(key, &cacheEntry{d: d, expires: h.clock() + min(d.CacheTTL, h.cfg.CacheTTL)})
	}
	return d, nil
}

// callError classifies a failed Decide call.
func (h *Host) callError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// The caller gave up (or its own deadline passed) first.
		return fmt.Errorf("host: policy %q: %w", h.cfg.Name, ctx.Err())
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		h.m.errTimeout.Inc()
		return fmt.Errorf("host: policy %q: %w after %v", h.cfg.Name, ErrTimeout, h.cfg.Timeout)
	case codes.Unavailable, codes.Canceled:
		h.m.errUnavailable.Inc()
		h.kickSupervisor()
		return fmt.Errorf("host: policy %q: %w: %w", h.cfg.Name, ErrUnavailable, err)
	default:
		h.m.errPlugin.Inc()
		return fmt.Errorf("host: policy %q: %w: %s", h.cfg.Name, ErrPlugin, status.Convert(err).Message())
	}
}

func (h *Host) kickSupervisor() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Close stops supervising and kills the plugin (gracefully first, SIGKILL
// when it does not exit). Decide fails with ErrUnavailable afterwards. Close
// is idempotent and returns once the process is gone.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		close(h.closing)
		<-h.done
		if inst := h.cur.Swap(nil); inst != nil {
			h.stop(inst, false)
		}
		h.signalChange()
		h.countUp(false)
		if h.cache != nil {
			h.cache.Purge()
			clock.release()
		}
	})
	return nil
}

// countUp adds this host's process to, or removes it from, the policy's
// realipd_plugin_up gauge. The gauge counts processes rather than being set,
// because the hosts of one policy share its series: during a reload's grace
// period the retiring host and its successor both run, and the retiring
// one's Close must not zero the successor's count.
func (h *Host) countUp(up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if up == h.counted {
		return
	}
	h.counted = up
	if up {
		h.m.up.Inc()
	} else {
		h.m.up.Dec()
	}
}

// setUp publishes inst as the current instance.
func (h *Host) setUp(inst *instance, restarted bool) {
	h.cur.Store(inst)
	h.countUp(true)
	h.mu.Lock()
	if restarted {
		h.restarts++
	}
	h.mu.Unlock()
	h.signalChange()
}

func (h *Host) signalChange() {
	h.mu.Lock()
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// state returns whether the plugin is up, how often it was restarted and a
// channel closed at the next change. Tests wait on it.
func (h *Host) state() (up bool, restarts int, changed <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur.Load() != nil, h.restarts, h.changed
}

func decisionFromProto(r *policypb.DecideResponse) plugins.Decision {
	d := plugins.Decision{
		Deny:     r.GetDeny(),
		Status:   int(r.GetStatus()),
		Body:     r.GetBody(),
		Metadata: r.GetMetadata(),
	}
	if hs := r.GetHeaders(); len(hs) > 0 {
		d.Headers = make([]plugins.Header, len(hs))
		for i, h := range hs {
			d.Headers[i] = plugins.Header{Name: h.GetName(), Value: string(h.GetValue())}
		}
	}
	if ttl := r.GetCacheTtl(); ttl != nil && ttl.IsValid() {
		d.CacheTTL = max(ttl.AsDuration(), 0)
	}
	return d
}

var (
	_ plugins.Policy       = (*Host)(nil)
	_ plugins.HeaderInputs = (*Host)(nil)
)
