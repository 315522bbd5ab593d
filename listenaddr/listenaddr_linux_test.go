//go:build linux

package listenaddr

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// The environment of a child this test binary starts as another user:
// dialChild=PATH connects to the unix socket PATH; listenChild="ADDR GID"
// listens on ADDR with Options.Group GID ("-": none). Either prints one
// line: "ok", or the error (and for listenChild, " | " and Reason).
const (
	dialChild   = "LISTENADDR_TEST_DIAL"
	listenChild = "LISTENADDR_TEST_LISTEN"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(dialChild); path != "" {
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err != nil {
			fmt.Println(err)
			os.Exit(0)
		}
		c.Close()
		fmt.Println("ok")
		os.Exit(0)
	}
	if spec := os.Getenv(listenChild); spec != "" {
		addr, gid, _ := strings.Cut(spec, " ")
		var o Options
		if gid != "-" {
			g, _ := strconv.Atoi(gid)
			o.Group = &g
		}
		ln, err := Listen(addr, o)
		if err != nil {
			fmt.Println(err.Error() + " | " + Reason(err))
			os.Exit(0)
		}
		ln.Close()
		fmt.Println("ok")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// as is the identity a child runs with.
type as struct {
	uid, gid uint32
	groups   []uint32 // supplementary
}

func (a as) String() string { return fmt.Sprintf("uid %d gid %d groups %v", a.uid, a.gid, a.groups) }

// runAs runs bin (netnstest.ExecutableForAnyone) as a with env set and
// returns its one line.
func runAs(t *testing.T, bin string, a as, env string) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child as %v: %v\n%s", a, err, out)
	}
	return strings.TrimSpace(string(out))
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		netnstest.Unavailable(t, "needs root to run processes as other users")
	}
}

// The users of the tests: realipd (65532) and Envoy (101) as in the
// Kubernetes example, sharing the group 4242 (realipd's socket_group),
// and another local user who is in neither group.
const (
	realipdID = 65532
	envoyID   = 101
	otherID   = 65534
	shared    = 4242
)

// TestGroupMayConnect: with Options.Group, a user of that group connects,
// whatever its uid, and a user outside it is refused; without, even a
// member of the socket's group is refused: only the owner (and root).
func TestGroupMayConnect(t *testing.T) {
	needRoot(t)
	bin := netnstest.ExecutableForAnyone(t)
	dir := netnstest.PublicDir(t)
	group := shared
	withGroup := filepath.Join(dir, "group.sock")
	ln, err := Listen("unix://"+withGroup, Options{Group: &group})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ownerOnly := filepath.Join(dir, "owner.sock")
	ln2, err := Listen("unix://"+ownerOnly, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	// The owner-only socket in the shared group, so that only its mode
	// keeps the group out.
	if err := os.Lchown(ownerOnly, -1, shared); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Lstat(withGroup)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || st.Gid != shared {
		t.Errorf("socket mode %v group %d, want 0660 and group %d", fi.Mode().Perm(), st.Gid, shared)
	}
	for _, tt := range []struct {
		path string
		who  as
		ok   bool
	}{
		{withGroup, as{envoyID, envoyID, []uint32{shared}}, true}, // a supplementary group
		{withGroup, as{envoyID, shared, nil}, true},               // the primary group
		{withGroup, as{envoyID, envoyID, nil}, false},
		{withGroup, as{otherID, otherID, []uint32{envoyID}}, false},
		{ownerOnly, as{envoyID, envoyID, []uint32{shared}}, false},
		{ownerOnly, as{envoyID, shared, nil}, false},
	} {
		got := runAs(t, bin, tt.who, dialChild+"="+tt.path)
		switch {
		case tt.ok && got != "ok":
			t.Errorf("%s as %v: %q, want a connection", filepath.Base(tt.path), tt.who, got)
		case !tt.ok && !strings.Contains(got, "permission denied"):
			t.Errorf("%s as %v: %q, want permission denied", filepath.Base(tt.path), tt.who, got)
		}
	}
}

// TestGroupOfANonRootListener: realipd, not root, may give its socket to a
// group it is a member of, and is refused, with the reason, any other.
func TestGroupOfANonRootListener(t *testing.T) {
	needRoot(t)
	bin := netnstest.ExecutableForAnyone(t)
	dir := netnstest.PublicDir(t)
	if err := os.Chmod(dir, 0o777); err != nil { // realipd may make its socket there
		t.Fatal(err)
	}
	for _, tt := range []struct {
		who   as
		group string
		want  string
	}{
		{as{realipdID, realipdID, []uint32{shared}}, strconv.Itoa(shared), "ok"},
		{as{realipdID, shared, nil}, strconv.Itoa(shared), "ok"},
		{as{realipdID, realipdID, nil}, "-", "ok"},
		{as{realipdID, realipdID, nil}, strconv.Itoa(shared), "give the socket to group 4242: lchown: operation not permitted | operation not permitted (a unix socket's socket_group must be one of realipd's own groups"},
	} {
		addr := "unix://" + filepath.Join(dir, "r.sock")
		if got := runAs(t, bin, tt.who, listenChild+"="+addr+" "+tt.group); !strings.Contains(got, tt.want) {
			t.Errorf("listen as %v with group %s: %q, want %q", tt.who, tt.group, got, tt.want)
		}
		if des, err := os.ReadDir(dir); err != nil || len(des) != 0 {
			t.Errorf("left in the directory: %v, %v", des, err)
		}
	}
}

// TestLiveSocketOfAnotherUser: a socket this user may not connect to may
// be live; Listen leaves it alone instead of taking its path.
func TestLiveSocketOfAnotherUser(t *testing.T) {
	needRoot(t)
	bin := netnstest.ExecutableForAnyone(t)
	dir := netnstest.PublicDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "r.sock")
	ln, err := Listen("unix://"+path, Options{}) // root's, mode 0600
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := runAs(t, bin, as{realipdID, realipdID, nil}, listenChild+"=unix://"+path+" -")
	if want := "a socket is there and may be live (connecting to it: connect: permission denied)"; !strings.Contains(got, want) {
		t.Errorf("listen as uid %d over root's live socket: %q, want %q", realipdID, got, want)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("root's socket after the attempt: %v", err)
	} else {
		c.Close()
	}
}
