package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// MaxFileSize bounds a configuration file: a larger one is refused before
// it is read in full, so that a path pointing at something huge (a log, a
// disk image) fails instead of filling memory.
const MaxFileSize = 4 << 20

// DefaultSettle is how long ReadSettled waits between its two reads.
const DefaultSettle = 250 * time.Millisecond

// settleReads bounds ReadSettled's reads of a file that keeps changing.
const settleReads = 10

// ReadFile returns the contents of the configuration file at path, which
// must be a regular file (a symlink to one is followed) of at most
// MaxFileSize bytes. Anything else is refused without being read: a named
// pipe (whose read would wait for a writer for ever), a device (/dev/zero
// never ends), a directory, a socket. When ctx ends before the read does
// (a stalled network file system), ReadFile returns ctx's error at once and
// leaves the read to finish on its own.
func ReadFile(ctx context.Context, path string) ([]byte, error) {
	if ctx.Done() == nil {
		return readRegular(path)
	}
	return withContext(ctx, path, func() ([]byte, error) { return readRegular(path) })
}

// withContext runs read in a goroutine and returns its result, or ctx's
// error as soon as ctx ends; an abandoned read's result is dropped.
func withContext(ctx context.Context, path string, read func() ([]byte, error)) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := read()
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("config: read %s: %w", path, context.Cause(ctx))
	}
}

// readRegular reads the regular file at path, at most MaxFileSize bytes.
// The type is checked before the file is opened (opening a device can have
// effects of its own) and again on the open file (the path may have been
// swapped in between); the open does not block (O_NONBLOCK: a named pipe
// swapped in after the first check opens at once and is then refused).
func readRegular(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	if err := checkRegular(path, fi); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	if err := checkRegular(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("config: %s: larger than %d MiB: not a configuration file", path, MaxFileSize>>20)
	}
	return data, nil
}

// checkRegular refuses what is not a regular file, or is one over
// MaxFileSize.
func checkRegular(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("config: %s: %s, not a regular file", path, fileKind(fi.Mode()))
	}
	if fi.Size() > MaxFileSize {
		return fmt.Errorf("config: %s: larger than %d MiB (%d bytes): not a configuration file", path, MaxFileSize>>20, fi.Size())
	}
	return nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "a special file"
}

// ErrUnsettled is returned by ReadSettled for a file that was still
// changing after every read it allows.
var ErrUnsettled = errors.New("the file kept changing")

// ReadSettled reads the configuration file at path (see ReadFile) once it
// has settled: see Settler. settle <= 0 means DefaultSettle.
func ReadSettled(ctx context.Context, path string, settle time.Duration) ([]byte, error) {
	return Settler{Settle: settle}.Read(ctx, path)
}

// A Settler reads a configuration file once it has settled: it reads the
// file until two reads, Settle apart, return the same bytes. A file being
// written in place (truncated, then written, maybe in several writes) is
// thus used only once its writer has been quiet for Settle; a file replaced
// atomically (renamed over) is read as it is. The zero Settler is ready to
// use.
type Settler struct {
	Settle time.Duration // between two reads; <= 0: DefaultSettle
	// Wait waits d or until ctx ends, returning ctx's error then; nil
	// means a timer. Tests change the file there.
	Wait func(ctx context.Context, d time.Duration) error
}

// Read returns the contents of the file at path once two reads agree (see
// ReadFile for what is refused). It gives up with ErrUnsettled after ten
// reads that all differ, and returns ctx's error when ctx ends while it
// waits or reads.
func (s Settler) Read(ctx context.Context, path string) ([]byte, error) {
	settle, wait := s.Settle, s.Wait
	if settle <= 0 {
		settle = DefaultSettle
	}
	if wait == nil {
		wait = sleep
	}
	prev, err := ReadFile(ctx, path)
	if err != nil {
		return nil, err
	}
	for range settleReads - 1 {
		if err := wait(ctx, settle); err != nil {
			return nil, fmt.Errorf("config: read %s: %w", path, err)
		}
		data, err := ReadFile(ctx, path)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(data, prev) {
			return data, nil
		}
		prev = data
	}
	return nil, fmt.Errorf("config: %s: %w (%d reads %v apart all differed); write it atomically (a rename over it)", path, ErrUnsettled, settleReads, settle)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
