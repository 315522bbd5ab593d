package config

// Intercept configures how traffic is steered to the capture ports: the
// iptables rules `realipd iptables` renders and applies, and the eBPF
// capture. Each part lives in its own file (intercept_iptables.go,
// intercept_ebpf.go) with its defaults and its checks.
type Intercept struct {
	IPTables IPTables `json:"iptables"`
	EBPF     EBPF     `json:"ebpf"`
}

func defaultIntercept() Intercept {
	return Intercept{IPTables: defaultIPTables(), EBPF: defaultEBPF()}
}

func (i *Intercept) validate(errs *errorList, path string, c *Config) {
	i.IPTables.validate(errs, path+".iptables", c)
	i.EBPF.validate(errs, path+".ebpf", c)
}
