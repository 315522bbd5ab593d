//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// walkthroughSection is the README section TestREADMENativeListenerWalkthrough
// runs.
const walkthroughSection = "## Try the native listener alone"

// readmeBlock is one fenced block of a README section.
type readmeBlock struct {
	lang  string // sh, yaml, text
	lines []string
}

// sectionBlocks returns the fenced blocks of the README section that
// starts with heading, in order.
func sectionBlocks(t *testing.T, heading string) []readmeBlock {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no section %q", heading)
	}
	s = s[i+1:]
	if j := strings.Index(s[len(heading):], "\n## "); j >= 0 {
		s = s[:len(heading)+j]
	}
	var blocks []readmeBlock
	for _, m := range regexp.MustCompile("(?s)```(\\w+)\n(.*?)```").FindAllStringSubmatch(s, -1) {
		blocks = append(blocks, readmeBlock{lang: m[1], lines: strings.Split(strings.TrimSuffix(m[2], "\n"), "\n")})
	}
	return blocks
}

// walkthroughJob is a command the walkthrough leaves running (a line
// ending with &), numbered as the shell numbers its jobs.
type walkthroughJob struct {
	n      int
	line   string
	cmd    *exec.Cmd
	output *logTail
	done   chan error
}

// TestREADMENativeListenerWalkthrough runs the README's walkthrough of the
// native listener alone, line by line as a newcomer types them as root,
// with what it builds itself (go build) and the only changes a test
// needs: the namespaces' names get the test's pid (so that nothing clashes
// with a walkthrough of one's own), the binaries go to a directory of the
// test's, the commands left running (&) are jobs of the test's, whose
// `kill %N` it does, and a curl is repeated (10 s at most) until its
// answer shows the headers the README shows, since the programs started
// just before may not listen yet. The defaults serve IPv4 as they are,
// and IPv6 once the README's listen line is added.
func TestREADMENativeListenerWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries: not with -short")
	}
	netnstest.Require(t)
	if _, err := exec.LookPath("curl"); err != nil {
		netnstest.Unavailable(t, "needs curl")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	names := strings.NewReplacer(
		"realipd-demo", fmt.Sprintf("realipd-demo-%d", os.Getpid()),
		"realipd-client", fmt.Sprintf("realipd-client-%d", os.Getpid()))
	t.Cleanup(func() {
		for _, n := range []string{"realipd-demo", "realipd-client"} {
			exec.Command("ip", "netns", "del", names.Replace(n)).Run() // gone already when the walkthrough went to its end
		}
	})

	var jobs []*walkthroughJob
	t.Cleanup(func() {
		for _, j := range jobs {
			j.cmd.Process.Kill()
			<-j.done
		}
	})
	stop := func(n int) {
		t.Helper()
		for i, j := range jobs {
			if j.n != n {
				continue
			}
			j.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-j.done:
				if err != nil {
					t.Errorf("%q after kill: %v\n%s", j.line, err, j.output)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%q did not stop\n%s", j.line, j.output)
			}
			jobs = append(jobs[:i], jobs[i+1:]...)
			return
		}
		t.Fatalf("kill %%%d: no such job", n)
	}
	start := func(line string) *walkthroughJob {
		t.Helper()
		n := 1
		for _, j := range jobs {
			n = max(n, j.n+1)
		}
		j := &walkthroughJob{n: n, line: line, output: newLogTail(), done: make(chan error, 1)}
		j.cmd = exec.Command("bash", "-c", "exec "+names.Replace(line))
		j.cmd.Dir, j.cmd.Stdout, j.cmd.Stderr = work, j.output, j.output
		if err := j.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { j.done <- j.cmd.Wait() }()
		jobs = append(jobs, j)
		return j
	}
	shell := func(dir, line string) string {
		t.Helper()
		cmd := exec.Command("bash", "-c", names.Replace(line))
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", line, err, out)
		}
		return string(out)
	}
	// curl repeats a curl line until its answer holds every line of want.
	curl := func(line string, want []string) {
		t.Helper()
		var out []byte
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			cmd := exec.CommandContext(ctx, "bash", "-c", names.Replace(line))
			cmd.Dir = work
			out, err = cmd.CombinedOutput()
			cancel()
			missing := false
			for _, w := range want {
				missing = missing || !strings.Contains(string(out), w+"\n")
			}
			if err == nil && !missing {
				return
			}
		}
		var logs strings.Builder
		for _, j := range jobs {
			fmt.Fprintf(&logs, "%s:\n%s\n", j.line, j.output)
		}
		t.Fatalf("%q: %v\n%s\nwant the lines %q\n%s", line, err, out, want, logs.String())
	}

	var serve *walkthroughJob
	var want []string // the headers the README shows the first curl print
	blocks := sectionBlocks(t, walkthroughSection)
	for _, b := range blocks {
		if b.lang == "text" {
			want = b.lines
		}
	}
	if len(want) == 0 {
		t.Fatal("the README shows no answer of curl's")
	}
	sh := 0
	for _, b := range blocks {
		switch b.lang {
		case "yaml": // demo.yaml, then what it becomes for IPv6
			if err := os.WriteFile(filepath.Join(work, "demo.yaml"), []byte(strings.Join(b.lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		case "sh":
			sh++
		default:
			continue
		}
		for _, line := range b.lines {
			switch {
			case strings.HasPrefix(line, "go build "):
				shell(repo, strings.Replace(line, " -o bin/ ", " -o "+filepath.Join(work, "bin")+"/ ", 1))
			case strings.HasSuffix(line, " &"):
				j := start(strings.TrimSuffix(line, " &"))
				if strings.Contains(line, " serve ") {
					serve = j
				}
			case strings.HasPrefix(line, "kill "):
				for _, arg := range strings.Fields(line)[1:] {
					n, err := strconv.Atoi(strings.TrimPrefix(arg, "%"))
					if err != nil {
						t.Fatalf("%q: %v", line, err)
					}
					stop(n)
				}
			case strings.Contains(line, " curl ") && strings.Contains(line, "[fd99::2]"):
				var want6 []string
				for _, w := range want {
					want6 = append(want6, strings.ReplaceAll(w, "10.99.0.1", "fd99::1"))
				}
				curl(line, want6)
			case strings.Contains(line, " curl "):
				curl(line, want)
				if strings.Contains(serve.output.String(), "no role listens") {
					t.Errorf("serve warns about the capture ports with the defaults:\n%s", serve.output)
				}
			case strings.Contains(line, " iptables ") && strings.Contains(line, "--apply"):
				if out := shell(work, line); !strings.Contains(out, "captured: new inbound TCP connections to any local port, to port 15006") || !strings.Contains(out, "applied the redirect rules") {
					t.Errorf("%q printed:\n%s", line, out)
				}
			default:
				shell(work, line)
			}
		}
	}
	if sh != 3 || len(jobs) != 0 {
		t.Errorf("ran %d sh blocks, %d jobs left running: want the walkthrough, its IPv6 part and its clean-up, which stops them", sh, len(jobs))
	}
}
