package agent

import (
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestWriteMetrics: what the agent writes by hand parses as Prometheus's
// text format, with its types and labels (escaped) intact.
func TestWriteMetrics(t *testing.T) {
	var b strings.Builder
	err := writeMetrics(&b, []metric{
		{"edge_agent_info", "The agent's version.", "gauge", 1, [][2]string{{"version", `v1 "quoted" \ back` + "\nslash"}}},
		{"edge_agent_tunnel_reconnects_total", "Reconnects.", "counter", 12, nil},
		{"edge_agent_heap_bytes", "Heap.", "gauge", 123456789, nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, b.String())
	}
	info := fams["edge_agent_info"]
	if info == nil || info.GetType().String() != "GAUGE" || info.Metric[0].Label[0].GetValue() != `v1 "quoted" \ back`+"\nslash" {
		t.Errorf("info: %v", info)
	}
	if r := fams["edge_agent_tunnel_reconnects_total"]; r == nil || r.GetType().String() != "COUNTER" || r.Metric[0].GetCounter().GetValue() != 12 {
		t.Errorf("reconnects: %v", r)
	}
	if h := fams["edge_agent_heap_bytes"]; h == nil || h.Metric[0].GetGauge().GetValue() != 123456789 {
		t.Errorf("heap: %v", h)
	}
}

// TestAgentMetrics: an agent that has not started its tunnel still
// answers, with the tunnel down.
func TestAgentMetrics(t *testing.T) {
	a := &Agent{}
	var b strings.Builder
	if err := writeMetrics(&b, a.metrics()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"edge_agent_tunnel_up 0", "edge_agent_sessions 0", `edge_agent_info{version=`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %q:\n%s", want, b.String())
		}
	}
}
