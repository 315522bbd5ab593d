package main

import (
	"errors"
	"slices"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/xds"
)

// xdsConfig is what the xDS translator needs from a validated cfg: the xds
// section, where Envoy reaches ext_proc and the metadata namespace it
// accepts, and in tproxy mode the mark the interception rules route on.
func xdsConfig(cfg *config.Config) xds.Config {
	x := cfg.XDS
	c := xds.Config{
		Mode:              xds.Mode(x.Mode),
		OutboundPort:      uint32(x.OutboundPort),
		InboundPort:       uint32(x.InboundPort),
		IPv4:              slices.Contains(x.IPFamilies, "ipv4"),
		IPv6:              slices.Contains(x.IPFamilies, "ipv6"),
		ExtProcAddress:    cfg.ExtProcAddress(),
		MetadataNamespace: cfg.ExtProc.MetadataNamespace,
	}
	for _, p := range x.HTTPPorts {
		c.HTTPPorts = append(c.HTTPPorts, uint32(p))
	}
	if c.Mode == xds.ModeTProxy {
		c.OriginalSrcMark = uint32(cfg.OrigDst.TProxyMark)
	}
	return c
}

// buildXDS translates cfg into the resources the control plane serves. A
// problem is reported as config.ValidationError, with the key path of the
// setting it comes from, like every other configuration error.
func buildXDS(cfg *config.Config) (*xds.Resources, error) {
	res, err := xds.Build(xdsConfig(cfg))
	if err == nil {
		return res, nil
	}
	var fields []config.FieldError
	for _, e := range unjoin(err) {
		if ce, ok := errors.AsType[*xds.ConfigError](e); ok {
			fields = append(fields, config.FieldError{Path: ce.Path, Msg: ce.Reason})
		} else {
			fields = append(fields, config.FieldError{Path: "xds", Msg: e.Error()})
		}
	}
	return nil, &config.ValidationError{Errors: fields}
}

// unjoin lists the errors an errors.Join (or a single error) holds.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
