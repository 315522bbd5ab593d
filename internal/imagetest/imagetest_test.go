package imagetest

import (
	"slices"
	"testing"
)

// TestImages: the names and stages the examples' tests are given, read
// from the repository's own files.
func TestImages(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	names, err := ImageNames(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Names{Realipd: "localhost/realipd:dev", IPTables: "localhost/realipd-iptables:dev"}); names != want {
		t.Errorf("names %+v, want %+v", names, want)
	}
	stages, err := Stages(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"realipd", "realipd-iptables"} {
		s, ok := stages[name]
		if !ok {
			t.Errorf("no stage %s in %v", name, stages)
			continue
		}
		if !slices.Equal(s.Entrypoint, []string{"/realipd"}) || !slices.Equal(s.Cmd, []string{"serve", "--config", "/etc/realipd/realipd.yaml"}) || s.User != "65532:65532" {
			t.Errorf("stage %s: %+v", name, s)
		}
	}
	if s := stages["realipd"]; s.From != "scratch" {
		t.Errorf("stage realipd is FROM %s, want scratch", s.From)
	}
	s := stages["realipd"]
	for _, tt := range []struct {
		entrypoint, cmd, want []string
	}{
		{nil, nil, []string{"/realipd", "serve", "--config", "/etc/realipd/realipd.yaml"}},
		{nil, []string{"version"}, []string{"/realipd", "version"}},
		{[]string{"/bin/sh"}, nil, []string{"/bin/sh"}},
		{[]string{"/bin/sh"}, []string{"-c", "x"}, []string{"/bin/sh", "-c", "x"}},
	} {
		if got := s.Argv(tt.entrypoint, tt.cmd); !slices.Equal(got, tt.want) {
			t.Errorf("Argv(%q, %q) = %q, want %q", tt.entrypoint, tt.cmd, got, tt.want)
		}
	}
}
