package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// cliDocPath is the command-line reference that TestCLIDoc keeps in step
// with the FlagSets.
const cliDocPath = "../../docs/cli.md"

// cliDocSection is one "## realipd ..." section of docs/cli.md.
type cliDocSection struct {
	heading  string             // "realipd serve"; "realipd" for the top level
	flags    map[string]cliFlag // by name without dashes
	commands []string           // the first cells of a command table ("| `serve` | ... |")
	examples []string           // the lines of its sh code blocks, trimmed
}

type cliFlag struct{ arg, def, meaning string }

var (
	cliFlagRow    = regexp.MustCompile("^\\| `(-{1,2}[A-Za-z0-9-]+)` \\| (.*?) \\| (.*?) \\| (.*) \\|$")
	cliCommandRow = regexp.MustCompile("^\\| `([a-z]+)` \\| (.*) \\|$")
)

// readCLIDoc parses docs/cli.md into its "## realipd ..." sections.
func readCLIDoc(t *testing.T) map[string]*cliDocSection {
	t.Helper()
	f, err := os.Open(cliDocPath)
	if err != nil {
		t.Fatalf("the command-line reference: %v", err)
	}
	defer f.Close()
	sections := map[string]*cliDocSection{}
	var cur *cliDocSection
	inSh := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			cur = nil
			if h := strings.TrimPrefix(line, "## "); h == "realipd" || strings.HasPrefix(h, "realipd ") {
				cur = &cliDocSection{heading: h, flags: map[string]cliFlag{}}
				sections[h] = cur
			}
		case cur == nil:
		case line == "```sh":
			inSh = true
		case inSh && line == "```":
			inSh = false
		case inSh:
			cur.examples = append(cur.examples, strings.TrimSpace(line))
		default:
			if m := cliFlagRow.FindStringSubmatch(line); m != nil {
				cur.flags[strings.TrimLeft(m[1], "-")] = cliFlag{arg: m[2], def: m[3], meaning: m[4]}
			} else if m := cliCommandRow.FindStringSubmatch(line); m != nil {
				cur.commands = append(cur.commands, m[1])
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sections
}

// dashed writes a flag as docs/cli.md does: -H, --config.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// docArg is how docs/cli.md writes the argument of f: `FILE`, or — for a
// flag that takes none.
func docArg(f *flag.Flag) string {
	name, _ := flag.UnquoteUsage(f)
	if name == "" {
		return "—"
	}
	return "`" + name + "`"
}

// docRow is the row of docs/cli.md to add for f.
func docRow(f *flag.Flag) string {
	def := "none"
	if f.DefValue != "" {
		def = "`" + f.DefValue + "`"
	}
	_, usage := flag.UnquoteUsage(f)
	return fmt.Sprintf("| `%s` | %s | %s | %s |", dashed(f.Name), docArg(f), def, usage)
}

// commandFlagSets returns a command's FlagSets: the one of the command
// alone and one per verb.
func commandFlagSets(c command) map[string]*flag.FlagSet {
	sets := map[string]*flag.FlagSet{"": c.flags("")}
	for _, v := range c.verbs {
		sets[v] = c.flags(v)
	}
	return sets
}

// TestCLIDoc checks docs/cli.md against the subcommands and their
// FlagSets: every subcommand has a section "## realipd NAME" and a row in
// the top-level command table, every flag a row in its section's table with
// the argument name its usage gives and its default, and nothing is
// documented that does not exist.
func TestCLIDoc(t *testing.T) {
	sections := readCLIDoc(t)
	top, ok := sections["realipd"]
	if !ok {
		t.Fatalf("%s: no section \"## realipd\" (the top level with its command table)", cliDocPath)
	}
	known := map[string]bool{"realipd": true}
	for _, c := range commands() {
		heading := "realipd " + c.name
		known[heading] = true
		if !slices.Contains(top.commands, c.name) {
			t.Errorf("%s: command %s is not in the command table of \"## realipd\": add the row\n| `%s` | %s |", cliDocPath, c.name, c.name, c.summary)
		}
		sec, ok := sections[heading]
		if !ok {
			t.Errorf("%s: command %s is not documented: add a section \"## %s\" with its synopsis, a flags table (| flag | argument | default | meaning |) and examples", cliDocPath, c.name, heading)
			continue
		}
		defined := map[string]bool{}
		for verb, fs := range commandFlagSets(c) {
			fs.VisitAll(func(f *flag.Flag) {
				if defined[f.Name] {
					return // the same flag of another verb
				}
				defined[f.Name] = true
				doc, ok := sec.flags[f.Name]
				where := heading
				if verb != "" {
					where += " " + verb
				}
				if !ok {
					t.Errorf("%s: flag %s of `%s` is not documented: add the row\n%s\nto the flags table under \"## %s\"", cliDocPath, dashed(f.Name), where, docRow(f), heading)
					return
				}
				if want := docArg(f); doc.arg != want {
					t.Errorf("%s: flag %s of `%s`: the argument column says %s, the flag's usage names %s", cliDocPath, dashed(f.Name), where, doc.arg, want)
				}
				if f.DefValue != "" && f.DefValue != "false" && !strings.Contains(doc.def, "`"+f.DefValue+"`") {
					t.Errorf("%s: flag %s of `%s`: the default column %q does not give the flag's default `%s`", cliDocPath, dashed(f.Name), where, doc.def, f.DefValue)
				}
				if strings.TrimSpace(doc.meaning) == "" {
					t.Errorf("%s: flag %s of `%s` has no meaning written", cliDocPath, dashed(f.Name), where)
				}
			})
		}
		for name := range sec.flags {
			if !defined[name] {
				t.Errorf("%s: \"## %s\" documents %s, which %s does not define: remove its row (or define the flag)", cliDocPath, heading, dashed(name), c.name)
			}
		}
		// The examples of --help appear in the section, so that the two
		// say the same.
		for _, ex := range helpExamples(t, c.name) {
			if !slices.Contains(sec.examples, ex) {
				t.Errorf("%s: the example line %q of `realipd %s --help` is not in a ```sh block of \"## %s\"", cliDocPath, ex, c.name, heading)
			}
		}
	}
	for _, name := range top.commands {
		if !known["realipd "+name] {
			t.Errorf("%s: the command table of \"## realipd\" lists %s, which is not a command: remove its row", cliDocPath, name)
		}
	}
	for _, ex := range helpExamples(t, "") {
		if !slices.Contains(top.examples, ex) {
			t.Errorf("%s: the example line %q of `realipd --help` is not in a ```sh block of \"## realipd\"", cliDocPath, ex)
		}
	}
	for heading := range sections {
		if !known[heading] {
			t.Errorf("%s: section \"## %s\" documents a command that does not exist: remove it (or add the command to commands() in run.go)", cliDocPath, heading)
		}
	}
}

// helpExamples returns the example lines of `realipd NAME --help` (name ""
// for realipd --help), trimmed.
func helpExamples(t *testing.T, name string) []string {
	t.Helper()
	args := []string{"--help"}
	if name != "" {
		args = []string{name, "--help"}
	}
	out, _, _ := runCmd(t, args...)
	_, ex, ok := strings.Cut(out, "\nExamples:\n")
	if !ok {
		return nil // TestHelp reports it
	}
	var lines []string
	for l := range strings.SplitSeq(strings.TrimRight(ex, "\n"), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

// TestHelp runs --help of realipd and of every subcommand (and verb)
// in-process: each exits 0, prints on stdout every flag of its FlagSet and
// ends with an Examples section of realipd command lines.
func TestHelp(t *testing.T) {
	checkExamples := func(t *testing.T, out string) {
		t.Helper()
		_, ex, ok := strings.Cut(out, "\nExamples:\n")
		if !ok {
			t.Fatalf("no \"Examples:\" section:\n%s", out)
		}
		for l := range strings.SplitSeq(strings.TrimRight(ex, "\n"), "\n") {
			if !strings.HasPrefix(l, "  ") {
				t.Errorf("example line %q is not indented by two spaces", l)
			}
		}
		first := strings.TrimSpace(strings.SplitN(ex, "\n", 2)[0])
		if !strings.HasPrefix(first, "realipd ") && !strings.HasPrefix(first, "sudo realipd ") {
			t.Errorf("the first example %q is not a realipd command line", first)
		}
	}

	t.Run("realipd", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
			out, errOut, code := runCmd(t, args...)
			if code != 0 || errOut != "" {
				t.Fatalf("realipd %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
			}
			for _, c := range commands() {
				if !strings.Contains(out, "\n  "+c.name+" ") {
					t.Errorf("realipd %s does not list the command %s:\n%s", strings.Join(args, " "), c.name, out)
				}
			}
			checkExamples(t, out)
		}
	})
	for _, c := range commands() {
		for verb, fs := range commandFlagSets(c) {
			args := []string{c.name}
			if verb != "" {
				args = append(args, verb)
			}
			t.Run(strings.Join(args, "_"), func(t *testing.T) {
				out, errOut, code := runCmd(t, append(args, "--help")...)
				if code != 0 || errOut != "" {
					t.Fatalf("realipd %s --help: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
				}
				if !strings.HasPrefix(out, "Usage:\n  realipd "+c.name) {
					t.Errorf("--help does not start with the synopsis:\n%s", out)
				}
				fs.VisitAll(func(f *flag.Flag) {
					if !strings.Contains(out, "\n  -"+f.Name+"\n") && !strings.Contains(out, "\n  -"+f.Name+" ") {
						t.Errorf("--help does not list the flag -%s:\n%s", f.Name, out)
					}
				})
				checkExamples(t, out)
				if verb == "" {
					if help, _, code := runCmd(t, "help", c.name); code != 0 || help != out {
						t.Errorf("realipd help %s (exit %d) differs from realipd %s --help", c.name, code, c.name)
					}
				}
			})
		}
	}
}
