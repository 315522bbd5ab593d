package decide

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEvery: one event per interval on the injected monotonic clock; the
// first passes at once.
func TestEvery(t *testing.T) {
	var now atomic.Int64
	e := Every{Interval: time.Minute, Now: func() time.Duration { return time.Duration(now.Load()) }}
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, true}, {time.Second, false}, {time.Minute - time.Nanosecond, false},
		{time.Minute, true}, {time.Minute + 1, false}, {3 * time.Minute, true},
	}
	for _, s := range steps {
		now.Store(int64(s.at))
		if got := e.Allow(); got != s.want {
			t.Errorf("Allow at %v = %v, want %v", s.at, got, s.want)
		}
	}
}

// TestEveryConcurrent: of many callers at one instant, exactly one passes.
func TestEveryConcurrent(t *testing.T) {
	e := Every{Interval: time.Hour}
	var passed atomic.Int32
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			if e.Allow() {
				passed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := passed.Load(); n != 1 {
		t.Errorf("%d passed, want 1", n)
	}
}

// TestMonotonicIgnoresTheWallClock: Monotonic is time.Since on a reading
// that carries the monotonic clock; a time stripped of it (Round(0)) is
// what a wall-clock step would move. This pins that Monotonic's origin
// keeps its monotonic reading.
func TestMonotonicIgnoresTheWallClock(t *testing.T) {
	if epoch.Round(0) == epoch {
		t.Fatal("the epoch has no monotonic clock reading")
	}
	a := Monotonic()
	b := Monotonic()
	if b < a {
		t.Errorf("Monotonic went back: %v then %v", a, b)
	}
}
