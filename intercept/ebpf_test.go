package intercept

import (
	"strings"
	"testing"
)

func TestFindCgroup2Mount(t *testing.T) {
	hybrid := `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
`
	if got, err := findCgroup2Mount(strings.NewReader(hybrid)); err != nil || got != "/sys/fs/cgroup/unified" {
		t.Errorf("hybrid host: %q, %v", got, err)
	}
	if got, err := findCgroup2Mount(strings.NewReader(`cgroup2 /run/my\040cgroups cgroup2 rw 0 0` + "\n")); err != nil || got != "/run/my cgroups" {
		t.Errorf("escaped mount point: %q, %v", got, err)
	}
	if _, err := findCgroup2Mount(strings.NewReader("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")); err == nil || !strings.Contains(err.Error(), "no cgroup2") {
		t.Errorf("v1 only: %v", err)
	}
}

func TestParseProcCgroup(t *testing.T) {
	got, err := parseProcCgroup(strings.NewReader("4:memory:/x\n0::/kubepods.slice/pod1\n"))
	if err != nil || got != "/kubepods.slice/pod1" {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := parseProcCgroup(strings.NewReader("4:memory:/x\n")); err == nil {
		t.Error("a v1-only process has no cgroup v2 path")
	}
}
