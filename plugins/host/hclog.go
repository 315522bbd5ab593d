package host

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// levelTrace is hclog's trace level as a slog level.
const levelTrace = slog.LevelDebug - 4

// slogLogger is an hclog.Logger that writes to a slog.Logger. go-plugin logs
// its own events and every line the plugin writes on stderr through it; a
// plugin's hclog JSON line arrives with the plugin's level, message and
// fields, so the bridge keeps them as they are.
type slogLogger struct {
	l       *slog.Logger
	name    string
	implied []any
}

func newSlogLogger(l *slog.Logger) *slogLogger { return &slogLogger{l: l} }

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (s *slogLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	lvl := slogLevel(level)
	ctx := context.Background()
	if !s.l.Enabled(ctx, lvl) {
		return
	}
	s.l.Log(ctx, lvl, msg, args...)
}

func (s *slogLogger) Trace(msg string, args ...any) { s.Log(hclog.Trace, msg, args...) }
func (s *slogLogger) Debug(msg string, args ...any) { s.Log(hclog.Debug, msg, args...) }
func (s *slogLogger) Info(msg string, args ...any)  { s.Log(hclog.Info, msg, args...) }
func (s *slogLogger) Warn(msg string, args ...any)  { s.Log(hclog.Warn, msg, args...) }
func (s *slogLogger) Error(msg string, args ...any) { s.Log(hclog.Error, msg, args...) }

func (s *slogLogger) enabled(l slog.Level) bool { return s.l.Enabled(context.Background(), l) }

func (s *slogLogger) IsTrace() bool { return s.enabled(levelTrace) }
func (s *slogLogger) IsDebug() bool { return s.enabled(slog.LevelDebug) }
func (s *slogLogger) IsInfo() bool  { return s.enabled(slog.LevelInfo) }
func (s *slogLogger) IsWarn() bool  { return s.enabled(slog.LevelWarn) }
func (s *slogLogger) IsError() bool { return s.enabled(slog.LevelError) }

func (s *slogLogger) ImpliedArgs() []any { return s.implied }

func (s *slogLogger) With(args ...any) hclog.Logger {
	return &slogLogger{l: s.l.With(args...), name: s.name, implied: append(append([]any(nil), s.implied...), args...)}
}

func (s *slogLogger) Name() string { return s.name }

func (s *slogLogger) Named(name string) hclog.Logger {
	if s.name != "" {
		name = s.name + "." + name
	}
	return s.ResetNamed(name)
}

func (s *slogLogger) ResetNamed(name string) hclog.Logger {
	return &slogLogger{l: s.l.With("logger", name), name: name, implied: s.implied}
}

// SetLevel does nothing: the slog.Logger's handler decides.
func (s *slogLogger) SetLevel(hclog.Level) {}

// GetLevel reports the lowest level the slog.Logger keeps, so that go-plugin
// skips parsing plugin lines that would be dropped anyway.
func (s *slogLogger) GetLevel() hclog.Level {
	switch {
	case s.IsTrace():
		return hclog.Trace
	case s.IsDebug():
		return hclog.Debug
	case s.IsInfo():
		return hclog.Info
	case s.IsWarn():
		return hclog.Warn
	case s.IsError():
		return hclog.Error
	default:
		return hclog.Off
	}
}

func (s *slogLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(s.StandardWriter(opts), "", 0)
}

func (s *slogLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return slog.NewLogLogger(s.l.Handler(), slog.LevelInfo).Writer()
}

var _ hclog.Logger = (*slogLogger)(nil)

// maxOutputLine bounds a buffered line of plugin output.
const maxOutputLine = 64 << 10

// lineLogger logs every line written to it at debug level. It receives
// what a plugin writes to its os.Stdout and os.Stderr after sdk.Serve
// started (go-plugin forwards both over gRPC); sdk.Logger's records take
// the other path, with their levels.
type lineLogger struct {
	l      *slog.Logger
	stream string
	buf    []byte
}

func (w *lineLogger) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) > maxOutputLine {
				w.flush()
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		w.flush()
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineLogger) flush() {
	w.l.Debug("plugin output", "stream", w.stream, "line", string(bytes.TrimRight(w.buf, "\r")))
	w.buf = w.buf[:0]
}
