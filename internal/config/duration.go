package config

import (
	"encoding/json"
	"fmt"
	"time"
)

// MarshalJSON writes d as a Go duration string ("20ms").
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.Duration.String())
}

// UnmarshalJSON reads a Go duration string ("20ms", "1m30s"). The number 0
// is accepted as the zero duration; any other bare number is refused
// because its unit would be a guess.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("config: duration: %w", err)
	}
	parsed, err := parseDuration(v)
	if err != nil {
		return err
	}
	d.Duration = parsed
	return nil
}

// parseDuration turns a decoded JSON value into a duration, with an error
// message fit to follow a key path.
func parseDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		parsed, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration (like \"20ms\" or \"10s\")", v)
		}
		return parsed, nil
	case float64:
		if v == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("%v is not a duration: write it with a unit, like \"%vs\"", v, v)
	case json.Number:
		if f, err := v.Float64(); err == nil && f == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("%v is not a duration: write it with a unit, like \"%vs\"", v, v)
	default:
		return 0, fmt.Errorf("%s is not a duration (like \"20ms\" or \"10s\")", describe(v))
	}
}
