package config

// EBPF configures the eBPF capture (intercept.ebpf).
type EBPF struct{}

func defaultEBPF() EBPF { return EBPF{} }

func (e *EBPF) validate(errs *errorList, path string, c *Config) {}
