package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // a failure, no result, an invalid configuration
	exitUsage   = 2 // bad command line
)

// exitError ends run with a given exit code. Its message, if any, has
// already been written to stderr by run.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// exitCode maps run's error to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	if ee, ok := errors.AsType[*exitError](err); ok {
		return ee.code
	}
	return exitFailure
}

// usageError is a bad command line: exit 2.
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// failure is an error already reported on stderr: exit 1.
func failure(err error) error { return &exitError{code: exitFailure, err: err} }

// command is one subcommand.
type command struct {
	name    string
	summary string
	// verbs are the words a command takes before its flags (ebpf
	// attach|detach|status); nil for most.
	verbs []string
	// flags builds the command's FlagSet for verb ("" for the command
	// alone) without running it, so that docs/cli.md's test can visit
	// every flag. run builds its FlagSet with the same function.
	flags func(verb string) *flag.FlagSet
	run   func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{name: "serve", summary: "run every enabled role (ext_proc, xDS, admin, native listener, eBPF capture) until SIGTERM",
			flags: func(string) *flag.FlagSet { fs, _ := serveFlagSet(); return fs }, run: runServe},
		{name: "resolve", summary: "resolve the client IP of one request given on the command line",
			flags: func(string) *flag.FlagSet { fs, _ := resolveFlagSet(); return fs }, run: runResolve},
		{name: "validate", summary: "check a configuration file and list every error with its key path",
			flags: func(string) *flag.FlagSet { fs, _, _ := validateFlagSet(); return fs }, run: runValidate},
		{name: "bootstrap", summary: "print the Envoy ADS bootstrap for realipd's xDS control plane",
			flags: func(string) *flag.FlagSet { fs, _ := bootstrapFlagSet(); return fs }, run: runBootstrap},
		{name: "iptables", summary: "render, apply or remove the iptables rules that steer traffic to the capture ports",
			flags: func(string) *flag.FlagSet { fs, _ := iptablesFlagSet(); return fs }, run: runIPTables},
		{name: "ebpf", summary: "attach, detach or show the eBPF capture (no iptables needed)", verbs: ebpfVerbs,
			flags: func(verb string) *flag.FlagSet { fs, _, _ := ebpfFlagSet(verb); return fs }, run: runEBPF},
		{name: "version", summary: "print the version",
			flags: func(string) *flag.FlagSet { return versionFlagSet() }, run: runVersion},
	}
}

// run is the whole program: main calls it with os.Args[1:], tests call it
// in-process. Every message for the user is written to stdout or stderr
// here; the returned error only carries the exit code (see exitCode).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, stdout, stderr)
	if err == nil {
		return nil
	}
	ee, ok := errors.AsType[*exitError](err)
	if ok && ee.code == exitOK {
		return nil // --help
	}
	if !ok {
		fmt.Fprintf(stderr, "realipd: %v\n", err)
		return failure(err)
	}
	if ee.err != nil {
		fmt.Fprintf(stderr, "realipd: %v\n", ee.err)
		if ee.code == exitUsage {
			fmt.Fprintf(stderr, "Run 'realipd help' for usage.\n")
		}
	}
	return err
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		printUsage(stderr)
		return &exitError{code: exitUsage}
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && rest[0] != "" {
			// "realipd help resolve" is "realipd resolve --help".
			return dispatch(ctx, []string{rest[0], "--help"}, stdout, stderr)
		}
		printUsage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, rest, stdout, stderr)
		}
	}
	return usageError("unknown command %q", name)
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `realipd finds the real client IP of requests that reach Envoy through
CDNs, load balancers and ingress hops, and the original destination of
intercepted connections.

Usage:
  realipd <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help      print this text, or with a command its flags: realipd help resolve

Run 'realipd <command> --help' (or 'realipd help <command>') for a
command's flags and examples. Exit status: 0 success, 1 failure (an
invalid configuration, an unresolved client IP, a role that cannot start),
2 a bad command line. The reference is docs/cli.md.

Examples:
`+topLevelExamples+`
`)
}

// topLevelExamples are the examples of realipd --help.
const topLevelExamples = `  realipd serve --config /etc/realipd/realipd.yaml
  realipd validate --config /etc/realipd/realipd.yaml
  realipd resolve --trusted-cidrs 10.0.0.0/8 --remote-addr 10.0.0.5:80 -H 'X-Forwarded-For: 203.0.113.9'
  realipd help iptables`

// newFlagSet returns a FlagSet whose usage text is the synopsis, the
// description, the flags and the examples (command lines indented by two
// spaces, one or more lines each).
func newFlagSet(name, synopsis, description, examples string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage:\n  realipd %s\n\n%s\n", synopsis, strings.TrimSpace(description))
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
		fmt.Fprintf(w, "\nExamples:\n%s\n", strings.Trim(examples, "\n"))
	}
	return fs
}

// parseFlags parses args with fs. --help prints the usage to stdout and
// ends the command with exit 0 (errHelp); a bad flag prints the flag
// package's message and the usage to stderr and ends with exit 2.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = stdout.Write(out.Bytes())
		return errHelp
	case err != nil:
		_, _ = stderr.Write(out.Bytes())
		return &exitError{code: exitUsage}
	}
	fs.SetOutput(stderr)
	if fs.NArg() > 0 {
		return usageError("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// errHelp ends a command successfully after --help.
var errHelp = &exitError{code: exitOK}

// flagsSet returns the names of the flags given on the command line.
func flagsSet(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
