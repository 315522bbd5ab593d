package main

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// maxTableEntries bounds a table so that a wrong file cannot eat the host.
const maxTableEntries = 1 << 20

// entry is one row of the table.
type entry struct {
	Country string // ISO 3166-1 alpha-2, upper case
	ASN     uint32
	Org     string
}

// table maps IPs to entries by longest prefix match. It is immutable once
// built.
type table struct {
	m    map[netip.Prefix]entry
	bits [2][]int // distinct prefix lengths, longest first: [0] IPv4, [1] IPv6
}

// parseTable reads CSV rows "network,country,asn,as_org". Lines starting
// with '#' are comments; a row whose first field is "network" is a header.
// network is a CIDR or a bare address; asn may carry an "AS" prefix and may
// be empty (0, unknown); as_org is optional. A later row for the same
// network replaces an earlier one.
func parseTable(r io.Reader) (*table, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true
	t := &table{m: make(map[netip.Prefix]entry)}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("table: %w", err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) > 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "network") {
			continue
		}
		if len(rec) < 2 || len(rec) > 4 {
			return nil, fmt.Errorf("table: line %d: want network,country[,asn[,as_org]], got %d fields", line, len(rec))
		}
		p, e, err := parseRow(rec)
		if err != nil {
			return nil, fmt.Errorf("table: line %d: %w", line, err)
		}
		if len(t.m) >= maxTableEntries {
			return nil, fmt.Errorf("table: more than %d entries", maxTableEntries)
		}
		t.m[p] = e
		fam := family(p.Addr())
		if !slices.Contains(t.bits[fam], p.Bits()) {
			t.bits[fam] = append(t.bits[fam], p.Bits())
		}
	}
	for i := range t.bits {
		slices.Sort(t.bits[i])
		slices.Reverse(t.bits[i])
	}
	return t, nil
}

func parseRow(rec []string) (netip.Prefix, entry, error) {
	var e entry
	network := strings.TrimSpace(rec[0])
	var p netip.Prefix
	var err error
	if strings.Contains(network, "/") {
		p, err = netip.ParsePrefix(network)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(network)
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err != nil {
		return p, e, fmt.Errorf("network: %w", err)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return p, e, fmt.Errorf("network %q: IPv4-mapped prefix shorter than /96", network)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if p.Addr().Zone() != "" {
		return p, e, fmt.Errorf("network %q: zones are not allowed", network)
	}
	p = p.Masked()
	e.Country = strings.ToUpper(strings.TrimSpace(rec[1]))
	if len(e.Country) != 2 || !isAlpha(e.Country) {
		return p, e, fmt.Errorf("country %q: want a two-letter code", rec[1])
	}
	if len(rec) > 2 {
		s := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(rec[2])), "AS")
		if s != "" {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return p, e, fmt.Errorf("asn %q: %w", rec[2], err)
			}
			e.ASN = uint32(n)
		}
	}
	if len(rec) > 3 {
		e.Org = strings.TrimSpace(rec[3])
	}
	return p, e, nil
}

func isAlpha(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// lookup returns the entry of the longest prefix containing ip.
func (t *table) lookup(ip netip.Addr) (entry, bool) {
	if !ip.IsValid() {
		return entry{}, false
	}
	ip = ip.Unmap().WithZone("")
	for _, b := range t.bits[family(ip)] {
		p, err := ip.Prefix(b)
		if err != nil {
			continue
		}
		if e, ok := t.m[p]; ok {
			return e, true
		}
	}
	return entry{}, false
}

func mustParseTable(b []byte) *table {
	t, err := parseTable(bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	return t
}
