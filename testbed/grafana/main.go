// Command dashcheck loads a Grafana dashboard JSON file with the Grafana Foundation SDK's strict
// decoder (required fields present, types right, no unknown fields) and exits non-zero, naming
// each problem, if it is not a valid dashboard. tests/dashboard.rs builds and runs it.
package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck DASHBOARD.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var d dashboard.Dashboard
	// The decoder returns its error list as an error even when the list is empty.
	if err := d.UnmarshalJSONStrict(raw); err != nil && err.Error() != "" {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ok: %d panels\n", len(d.Panels))
}
