package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// The commands the README and envoy/README.md show, in their sh blocks,
// are checked here: every realipd command names a subcommand that exists
// with flags its FlagSet accepts, every Envoy configuration named exists,
// and the realipd commands that need neither Envoy, nor root, nor a
// process left running are run, their output compared with what the text
// shows under them. serve is run by TestEndToEnd and TestServeSignals.

// shownCommand is one command of a sh block, with the output shown under
// it (lines not starting with "$ " after a "$ " command).
type shownCommand struct {
	doc, line string
	words     []string
	output    []string
}

// shellWords splits a command line as sh does for the simple commands the
// docs show: single and double quotes, backslash-newline joined before,
// a # starting a comment between words, and $(...) substituted by sub.
func shellWords(line string, sub func(string) string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := strings.IndexByte(line[i+1:], '"')
			cur.WriteString(sub(line[i+1 : i+1+j]))
			i += j + 1
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

var reSubst = regexp.MustCompile(`\$\([^)]*\)`)

// shownCommands returns the commands of the sh blocks of the file doc.
func shownCommands(t *testing.T, doc string) []shownCommand {
	t.Helper()
	data, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	var out []shownCommand
	inBlock, prompted := false, false
	var pending string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case !inBlock && line == "```sh":
			inBlock, prompted = true, false
			continue
		case inBlock && line == "```":
			inBlock = false
			continue
		case !inBlock:
			continue
		}
		if pending != "" {
			line = pending + strings.TrimLeft(line, " ")
			pending = ""
		}
		if strings.HasSuffix(line, `\`) {
			pending = strings.TrimSuffix(line, `\`)
			continue
		}
		trimmed := strings.TrimSpace(line)
		cmd, hasPrompt := strings.CutPrefix(trimmed, "$ ")
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
			continue
		case prompted && !hasPrompt:
			// Output of the last command.
			out[len(out)-1].output = append(out[len(out)-1].output, trimmed)
			continue
		}
		prompted = prompted || hasPrompt
		words := shellWords(cmd, func(s string) string {
			return reSubst.ReplaceAllString(s, "101") // $(id -u envoy)
		})
		// Redirections and pipes end the command.
		if i := slices.IndexFunc(words, func(w string) bool { return w == ">" || w == "|" || w == "2>&1" }); i >= 0 {
			words = words[:i]
		}
		if len(words) > 0 && words[0] == "sudo" {
			words = words[1:]
		}
		out = append(out, shownCommand{doc: doc, line: cmd, words: words})
	}
	return out
}

// readmeConfig is the realipd.yaml the shown commands get: the proxies of
// the README's examples (10.0.0.0/8) trusted.
const readmeConfig = `
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8]
`

func TestShownCommands(t *testing.T) {
	cfg := writeFile(t, "realipd.yaml", readmeConfig)
	byName := map[string]command{}
	for _, c := range commands() {
		byName[c.name] = c
	}
	var all []shownCommand
	for _, doc := range []string{"../../README.md", "../../envoy/README.md"} {
		all = append(all, shownCommands(t, doc)...)
	}
	ran := 0
	for _, sc := range all {
		w := sc.words
		switch {
		case len(w) >= 2 && w[0] == "envoy" && w[1] == "-c":
			if f := w[2]; !strings.HasPrefix(f, "envoy/") && f != "bootstrap.yaml" {
				t.Errorf("%s: %q: Envoy config %s is not one this repository ships", sc.doc, sc.line, f)
			} else if strings.HasPrefix(f, "envoy/") {
				if _, err := os.Stat(filepath.Join("../..", f)); err != nil {
					t.Errorf("%s: %q: %v", sc.doc, sc.line, err)
				}
			}
			continue
		case len(w) >= 3 && w[0] == "go" && w[1] == "run" && w[2] == "./cmd/realipd":
			w = append([]string{"realipd"}, w[3:]...)
		case len(w) == 0 || w[0] != "realipd":
			continue // curl, go test, ...
		}
		args := slices.Clone(w[1:])
		for i, a := range args {
			if a == "realipd.yaml" {
				args[i] = cfg
			}
		}
		if len(args) == 0 {
			t.Errorf("%s: %q: no subcommand", sc.doc, sc.line)
			continue
		}
		c, ok := byName[args[0]]
		if !ok {
			t.Errorf("%s: %q: realipd has no command %q", sc.doc, sc.line, args[0])
			continue
		}
		rest, verb := args[1:], ""
		if len(c.verbs) > 0 && len(rest) > 0 {
			verb, rest = rest[0], rest[1:]
		}
		fs := c.flags(verb)
		fs.SetOutput(io.Discard)
		if err := fs.Parse(rest); err != nil {
			t.Errorf("%s: %q: %v", sc.doc, sc.line, err)
			continue
		}
		// Run what needs no Envoy, no root, and does not keep running.
		switch {
		case args[0] == "serve", args[0] == "ebpf",
			args[0] == "iptables" && (slices.Contains(rest, "--apply") || slices.Contains(rest, "--remove")):
			continue
		}
		ran++
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, &stdout, &stderr)
		code := exitCode(err)
		got := strings.TrimSpace(stdout.String())
		want := strings.Join(sc.output, "\n")
		switch {
		case strings.HasPrefix(want, "realipd: "):
			// The text shows an unresolved client: stderr, exit 1.
			if code != 1 || strings.TrimSpace(stderr.String()) != want {
				t.Errorf("%s: %q: exit %d, stderr %q, want exit 1 and %q", sc.doc, sc.line, code, stderr.String(), want)
			}
		case code != 0:
			t.Errorf("%s: %q: exit %d: %s", sc.doc, sc.line, code, stderr.String())
		case want != "" && got != want:
			t.Errorf("%s: %q printed %q, the text shows %q", sc.doc, sc.line, got, want)
		}
	}
	if ran < 5 {
		t.Errorf("only %d commands run: the sh blocks were not found", ran)
	}
}

// TestREADMEHasOneRunAndOneTestCommand: the README's "Run it" and "Test
// it" sections each show exactly one command, the ones the README
// promises work on a fresh clone.
func TestREADMEHasOneRunAndOneTestCommand(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for heading, want := range map[string]string{"## Run it\n": "go run ./cmd/realipd serve", "## Test it\n": "go test ./..."} {
		s := string(data)
		i := strings.Index(s, heading)
		if i < 0 {
			t.Errorf("README has no %q", strings.TrimSpace(heading))
			continue
		}
		s = s[i+len(heading):]
		if j := strings.Index(s, "\n## "); j >= 0 {
			s = s[:j]
		}
		blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(s, -1)
		if len(blocks) != 1 || strings.TrimSpace(blocks[0][1]) != want {
			t.Errorf("%s: want exactly one block with %q, got %q", strings.TrimSpace(heading), want, blocks)
		}
	}
}

// readmeConfigExample returns the yaml block of the README's "Configure
// it" section.
func readmeConfigExample(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "## Configure it\n")
	if i < 0 {
		t.Fatal("README has no Configure it section")
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(s[i:])
	if m == nil {
		t.Fatal("README's Configure it section has no yaml block")
	}
	return m[1]
}

// TestREADMEConfigExample puts the README's example in a directory of its
// own, with the plugin built where its comment says and the list its
// config names, and runs it from another directory: validate accepts it,
// serve runs it (the plugin reading its list next to the file) and denies
// a listed client, and without the list validate refuses it, as serve
// would.
func TestREADMEConfigExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the denylist plugin")
	}
	example := readmeConfigExample(t)
	const placeholder = `"<sha256sum bin/denylist>"`
	if !strings.Contains(example, placeholder) || !strings.Contains(example, "path: ./bin/denylist") || !strings.Contains(example, "list: ./deny.txt") {
		t.Fatalf("the README's example changed; update this test:\n%s", example)
	}
	bin, sum, err := builtPlugin("denylist")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	content, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "denylist"), content, 0o755); err != nil {
		t.Fatal(err)
	}
	// The requests of serveRun.outcome come from 192.168.1.1 through the
	// README's trusted 10.0.0.0/8.
	list := filepath.Join(dir, "deny.txt")
	if err := os.WriteFile(list, []byte("192.168.1.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "realipd.yaml")
	// Listeners on ports the kernel picks, so that the test collides with
	// nothing; the paths are the README's.
	text := strings.Replace(example, placeholder, `"`+sum+`"`, 1) + "extproc: {listen: 127.0.0.1:0}\nadmin: {listen: 127.0.0.1:0}\nxds: {enabled: false}\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if wd, _ := os.Getwd(); wd == dir {
		t.Fatal("the test must run from another directory than the file's")
	}

	if out, errOut, code := runCmd(t, "validate", "--config", cfg); code != 0 {
		t.Errorf("validate: exit %d\n%s%s", code, out, errOut)
	}
	s := startServe(t, cfg, nil)
	s.client.MessageTimeout = 5 * time.Second // the first call to a plugin sets up TLS
	if got := s.outcome(t); got != "deny Forbidden" {
		t.Errorf("serve: the listed client got %q, want it denied", got)
	}
	s.stop()

	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCmd(t, "validate", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "policies[1]") || !strings.Contains(errOut, list) {
		t.Errorf("validate without the list: exit %d, stderr %q; want exit 1 naming policies[1] and %s", code, errOut, list)
	}
}

// TestREADMECDNExample: the README's CDN example is a valid file whose
// trusted proxies are the cloudflare preset (checked without fetching it:
// tests contact nothing outside the machine).
func TestREADMECDNExample(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var example string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(data), -1) {
		if strings.Contains(m[1], "preset:") {
			example = m[1]
		}
	}
	if example == "" {
		t.Fatal("the README has no yaml example with a preset")
	}
	cfg, err := config.Parse([]byte(example))
	if err != nil {
		t.Fatalf("the README's CDN example: %v", err)
	}
	specs := cfg.Trust.TrustedSources()
	if len(specs) != 1 || specs[0].Preset != "cloudflare" || !specs[0].Required || cfg.Trust.CacheDir == "" {
		t.Errorf("the README's CDN example trusts %+v (cache_dir %q), want the cloudflare preset", specs, cfg.Trust.CacheDir)
	}
}
