package sdk

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// stderr is the process's standard error as it was before go-plugin
// redirected os.Stderr: realipd reads plugin logs from there.
var stderr io.Writer = os.Stderr

var (
	loggerOnce sync.Once
	logger     *slog.Logger
)

// Logger returns a logger whose records realipd receives and logs at the
// same level, tagged with the policy. It writes hclog's JSON line format to
// the plugin's standard error, and drops records below the level realipd
// asked for (LogLevelEnv; debug when unset).
func Logger() *slog.Logger {
	loggerOnce.Do(func() { logger = NewLogger(stderr, levelFromName(logLevelName())) })
	return logger
}

// NewLogger returns a logger writing hclog JSON lines to w, dropping records
// below level. Logger is what plugins normally use; NewLogger is for tests.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: hclogAttr,
	}))
}

// levelTrace is hclog's trace level expressed as a slog level.
const levelTrace = slog.LevelDebug - 4

// hclogAttr renames slog's built-in keys to the ones hclog's JSON format
// (and go-plugin's reader of it) uses.
func hclogAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		if t, ok := a.Value.Any().(time.Time); ok {
			return slog.String("@timestamp", t.Format("2006-01-02T15:04:05.000000Z07:00"))
		}
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			return slog.String("@level", levelName(l))
		}
	case slog.MessageKey:
		return slog.String("@message", a.Value.String())
	}
	return a
}

func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelDebug:
		return "trace"
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}

func levelFromName(s string) slog.Level {
	switch strings.ToLower(s) {
	case "trace":
		return levelTrace
	case "info":
		return slog.LevelInfo
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelDebug
	}
}

func logLevelName() string {
	if s := os.Getenv(LogLevelEnv); s != "" {
		return s
	}
	return "debug"
}
