// Package imagetest tells the examples' tests what the container images
// this repository builds are: the names `make image` and `make
// image-iptables` tag by default (the Makefile's IMAGE and TAG, which
// packaging/image.sh must default to as well) and, for each target of the
// Containerfile, its entrypoint, command and user. The examples must run
// exactly those images, the way they are built.
package imagetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Root is the repository's root: the nearest directory above the working
// directory whose go.mod is realipd's.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module github.com/realipd/realipd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("imagetest: no go.mod of github.com/realipd/realipd above the working directory")
		}
		dir = parent
	}
}

// Names are the images make image (Realipd, the Containerfile's target
// realipd) and make image-iptables (IPTables, target realipd-iptables) tag
// by default.
type Names struct{ Realipd, IPTables string }

var (
	reMakeVar   = regexp.MustCompile(`(?m)^(IMAGE|TAG)\s*\?=\s*(\S+)\s*$`)
	reScriptVar = regexp.MustCompile(`(?m)^(IMAGE|TAG)="\$\{(?:IMAGE|TAG):-([^}]+)\}"$`)
)

// ImageNames reads the default names from the Makefile and
// packaging/image.sh under root, and fails when the two disagree.
func ImageNames(root string) (Names, error) {
	vars := func(file string, re *regexp.Regexp) (map[string]string, error) {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, sub := range re.FindAllStringSubmatch(string(data), -1) {
			m[sub[1]] = sub[2]
		}
		if m["IMAGE"] == "" || m["TAG"] == "" {
			return nil, fmt.Errorf("imagetest: %s: no default IMAGE and TAG", file)
		}
		return m, nil
	}
	mk, err := vars("Makefile", reMakeVar)
	if err != nil {
		return Names{}, err
	}
	sh, err := vars("packaging/image.sh", reScriptVar)
	if err != nil {
		return Names{}, err
	}
	if mk["IMAGE"] != sh["IMAGE"] || mk["TAG"] != sh["TAG"] {
		return Names{}, fmt.Errorf("imagetest: the Makefile tags %s:%s, packaging/image.sh %s:%s", mk["IMAGE"], mk["TAG"], sh["IMAGE"], sh["TAG"])
	}
	script, _ := os.ReadFile(filepath.Join(root, "packaging/image.sh"))
	if !strings.Contains(string(script), `realipd-iptables) name="$IMAGE-iptables"`) {
		return Names{}, errors.New(`imagetest: packaging/image.sh no longer names the realipd-iptables target's image "$IMAGE-iptables"`)
	}
	return Names{
		Realipd:  mk["IMAGE"] + ":" + mk["TAG"],
		IPTables: mk["IMAGE"] + "-iptables:" + mk["TAG"],
	}, nil
}

// Stage is one stage of the Containerfile: what an image built with it as
// the target runs.
type Stage struct {
	Name, From string
	Entrypoint []string // ENTRYPOINT, exec form
	Cmd        []string // CMD, exec form
	User       string
}

// Argv is what a container of the stage's image runs: entrypoint and
// command, each replaced when the container gives its own (nil: not
// given), as Docker, Compose and Kubernetes do (a new entrypoint drops the
// image's command).
func (s Stage) Argv(entrypoint, cmd []string) []string {
	ep, c := s.Entrypoint, s.Cmd
	if entrypoint != nil {
		ep, c = entrypoint, nil
	}
	if cmd != nil {
		c = cmd
	}
	return append(append([]string{}, ep...), c...)
}

// Stages parses root's Containerfile: its named stages, by name.
func Stages(root string) (map[string]Stage, error) {
	data, err := os.ReadFile(filepath.Join(root, "Containerfile"))
	if err != nil {
		return nil, err
	}
	stages := map[string]Stage{}
	var cur *Stage
	flush := func() {
		if cur != nil && cur.Name != "" {
			stages[cur.Name] = *cur
		}
	}
	var line string
	for raw := range strings.Lines(string(data)) {
		raw = strings.TrimRight(raw, "\r\n")
		if strings.HasPrefix(strings.TrimSpace(raw), "#") && line == "" {
			continue
		}
		if strings.HasSuffix(raw, `\`) {
			line += strings.TrimSuffix(raw, `\`) + " "
			continue
		}
		line += raw
		inst, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest = strings.TrimSpace(rest)
		line = ""
		switch strings.ToUpper(inst) {
		case "FROM":
			flush()
			f := strings.Fields(rest)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			cur = &Stage{}
			if len(f) > 0 {
				cur.From = f[0]
			}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				cur.Name = f[2]
			}
		case "ENTRYPOINT", "CMD":
			if cur == nil {
				return nil, fmt.Errorf("imagetest: Containerfile: %s before FROM", inst)
			}
			var v []string
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				return nil, fmt.Errorf("imagetest: Containerfile: %s %s: want the exec (JSON) form: %v", inst, rest, err)
			}
			if strings.EqualFold(inst, "ENTRYPOINT") {
				cur.Entrypoint, cur.Cmd = v, nil
			} else {
				cur.Cmd = v
			}
		case "USER":
			if cur == nil {
				return nil, errors.New("imagetest: Containerfile: USER before FROM")
			}
			cur.User = rest
		}
	}
	flush()
	return stages, nil
}
