package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/config"
)

const ebpfSynopsis = "ebpf attach|detach|status [--config FILE] [--pin DIR]"

const ebpfDescription = `
Manage the eBPF capture of intercept.ebpf without running serve, for an init
container or a node agent: no iptables rule is involved.

  attach   load and attach the capture, pinned in the pin directory so that it
           stays attached after this command exits (intercept.ebpf.pin, or
           --pin; required). Attaching again replaces the programs in place.
  detach   remove the capture pinned in the pin directory.
  status   print what is pinned there (hooks, cgroups, program ids) and the
           counters; exit 1 when nothing is.

attach needs root (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN), a cgroup v2
hierarchy (found in /proc/mounts) and a bpffs for the pin directory.
'realipd serve' attaches the same capture itself when intercept.ebpf.enabled
is true (and detaches it on exit unless it is pinned).`

const ebpfExamples = `
  sudo realipd ebpf attach --config /etc/realipd/realipd.yaml
  sudo realipd ebpf status --pin /sys/fs/bpf/realipd
  sudo realipd ebpf detach --config /etc/realipd/realipd.yaml`

// ebpfVerbs are the subcommands of ebpf.
var ebpfVerbs = []string{"attach", "detach", "status"}

// ebpfFlagSet builds the FlagSet of 'ebpf VERB' ("" for ebpf alone, which
// lists the same flags in its usage) without running it.
func ebpfFlagSet(verb string) (fs *flag.FlagSet, path, pin *string) {
	name := "ebpf"
	if verb != "" {
		name += " " + verb
	}
	fs = newFlagSet(name, ebpfSynopsis, ebpfDescription, ebpfExamples)
	path = fs.String("config", "", "configuration `FILE` (default: built-in defaults)")
	pin = fs.String("pin", "", "pin `DIR` on a bpffs (default: intercept.ebpf.pin)")
	return fs, path, pin
}

// runEBPF is `realipd ebpf attach|detach|status`.
func runEBPF(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fs, _, _ := ebpfFlagSet("")
		if err := parseFlags(fs, args, stdout, stderr); err != nil {
			return err
		}
		return usageError("ebpf: give attach, detach or status")
	}
	verb, rest := args[0], args[1:]
	if !slices.Contains(ebpfVerbs, verb) {
		return usageError("ebpf: unknown subcommand %q (attach, detach or status)", verb)
	}
	fs, path, pin := ebpfFlagSet(verb)
	if err := parseFlags(fs, rest, stdout, stderr); err != nil {
		return err
	}
	cfg, err := loadOrDefault(ctx, *path)
	if err != nil {
		return failure(err)
	}
	dir := *pin
	if dir == "" {
		dir = cfg.Intercept.EBPF.Pin
	}
	if dir == "" {
		return usageError("ebpf %s: no pin directory: set intercept.ebpf.pin or give --pin (without one the capture would go with this command)", verb)
	}
	switch verb {
	case "attach":
		return ebpfAttach(cfg, dir, stdout)
	case "detach":
		if err := intercept.DetachEBPF(dir); err != nil {
			return failure(err)
		}
		fmt.Fprintf(stdout, "eBPF capture detached (%s)\n", dir)
		return nil
	default:
		st, err := intercept.EBPFStatus(dir)
		if errors.Is(err, intercept.ErrEBPFNotPinned) {
			fmt.Fprintf(stdout, "no eBPF capture is pinned in %s\n", dir)
			return &exitError{code: exitFailure}
		}
		if err != nil {
			return failure(err)
		}
		printEBPFState(stdout, st)
		return nil
	}
}

func ebpfAttach(cfg *config.Config, dir string, stdout io.Writer) error {
	if cfg.Intercept.EBPF.Cgroup == "" {
		return failure(errors.New("ebpf attach: intercept.ebpf.cgroup is required (the cgroup v2 directory whose connects are captured)"))
	}
	opts := ebpfOptions(cfg)
	opts.Pin = dir
	c, err := intercept.AttachEBPF(opts)
	if err != nil {
		return failure(err)
	}
	links := c.Links()
	if err := c.Close(); err != nil { // pinned: only this process's handles
		return failure(err)
	}
	fmt.Fprintf(stdout, "eBPF capture attached and pinned in %s: TCP connects of %s go to port %d (sockets marked %d excluded)\n",
		dir, opts.Cgroup, opts.OutboundPort, opts.ExcludeMark)
	printEBPFLinks(stdout, links)
	if len(opts.InboundPorts) > 0 {
		fmt.Fprintf(stdout, "inbound ports %v: steering attached; nothing is steered until an inbound capture socket is registered\n", opts.InboundPorts)
	}
	return nil
}

func printEBPFState(w io.Writer, st *intercept.EBPFState) {
	fmt.Fprintf(w, "eBPF capture pinned in %s\n", st.Pin)
	printEBPFLinks(w, st.Links)
	if len(st.InboundPorts) > 0 {
		fmt.Fprintf(w, "inbound ports: %v\n", st.InboundPorts)
	}
	c := st.Counters
	fmt.Fprintf(w, "counters: captured %d, excluded %d, recorded %d, lookups answered %d, missed %d, inbound steered %d\n",
		c.Captured, c.Excluded, c.Recorded, c.Answered, c.Missed, c.Steered)
}

func printEBPFLinks(w io.Writer, links []intercept.EBPFLink) {
	for _, l := range links {
		fmt.Fprintf(w, "  %-18s %-18s %s (link %d, program %d)\n", l.Name, l.Hook, l.Target, l.LinkID, l.ProgramID)
	}
}
