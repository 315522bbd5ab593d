package config

// IPTables configures the iptables interception rules (intercept.iptables).
type IPTables struct{}

func defaultIPTables() IPTables { return IPTables{} }

func (t *IPTables) validate(errs *errorList, path string, c *Config) {}
