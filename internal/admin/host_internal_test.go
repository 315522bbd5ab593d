package admin

import "testing"

// TestListenHostName: the host name Run was given is accepted in the Host
// header; an IP address or a wildcard adds no name.
func TestListenHostName(t *testing.T) {
	for listen, want := range map[string]string{
		"Admin.Internal.:9902": "admin.internal",
		"localhost:0":          "localhost",
		"127.0.0.1:9902":       "",
		"[::1]:9902":           "",
		":9902":                "",
		"0.0.0.0:9902":         "",
		"not an address":       "",
	} {
		if got := listenHostName(listen); got != want {
			t.Errorf("listenHostName(%q) = %q, want %q", listen, got, want)
		}
	}
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host, listenName string
		want             bool
	}{
		{"admin.internal:9902", "admin.internal", true},
		{"ADMIN.internal", "admin.internal", true},
		{"admin.internal", "", false},
		{"other.internal", "admin.internal", false},
	} {
		if got := s.hostAllowed(tt.host, tt.listenName); got != tt.want {
			t.Errorf("hostAllowed(%q, listen name %q) = %v, want %v", tt.host, tt.listenName, got, tt.want)
		}
	}
}
