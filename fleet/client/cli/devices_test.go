package cli

import (
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

func TestDeviceTableLinkHealth(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	devs := []api.Device{{
		Name: "pi-1", ID: "d1", Online: true, LastSeen: now, AgentVersion: "v1", OS: "linux", Arch: "arm64",
		Addr: "192.0.2.7:4242", JoinedAt: now.Add(-48 * time.Hour),
		Link: api.Link{RTTMillis: 83.4, LossPercent: 1.25, BytesSent: 1536, BytesReceived: 3 << 20, Reconnects: 4,
			AddrChangedAt: now.Add(-10 * time.Minute)},
	}}
	var b strings.Builder
	if err := (DeviceTable{Verbose: true, Now: now}).Write(&b, devs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	got := strings.Join(strings.Fields(lines[1]), " ")
	want := "pi-1 d1 - online tunnel just now v1 - - linux/arm64 192.0.2.7:4242 2d ago 83ms 1.2% 4 1.5KiB/3.0MiB 10m ago"
	if got != want {
		t.Errorf("row = %q\nwant  %q", got, want)
	}
}

func TestBytes(t *testing.T) {
	tests := []struct {
		n    uint64
		want string
	}{{0, "0B"}, {1023, "1023B"}, {1024, "1.0KiB"}, {5 << 20, "5.0MiB"}, {3 << 30, "3.0GiB"}}
	for _, tt := range tests {
		if got := Bytes(tt.n); got != tt.want {
			t.Errorf("Bytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestDeviceTableUpdate(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		u    *api.DeviceUpdate
		want string
	}{
		{"none", nil, "v1 - -"},
		{"downloading", &api.DeviceUpdate{Target: "v2", State: "downloading", Done: 42, Total: 100}, "v1 v2 downloading 42%"},
		{"rolled back", &api.DeviceUpdate{Target: "v2", State: "rolled_back", Reason: "tunnel not up"}, "v1 v2 rolled_back: tunnel not up"},
		{"committed", &api.DeviceUpdate{Target: "v2", State: "committed"}, "v1 v2 committed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs := []api.Device{{Name: "pi-1", ID: "d1", AgentVersion: "v1", Update: tt.u}}
			var b strings.Builder
			if err := (DeviceTable{Verbose: true, Now: now}).Write(&b, devs); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(b.String()), "\n")
			if !strings.Contains(strings.Join(strings.Fields(lines[1]), " "), tt.want) {
				t.Errorf("row %q does not show %q", lines[1], tt.want)
			}
		})
	}
}

func TestDeviceTableUpdateWithoutVerbose(t *testing.T) {
	devs := []api.Device{{Name: "pi-1", AgentVersion: "v1", Update: &api.DeviceUpdate{Target: "v2", State: "downloading", Done: 1, Total: 4}}}
	var b strings.Builder
	if err := (DeviceTable{Update: true}).Write(&b, devs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); !strings.HasSuffix(got, "VERSION TARGET UPDATE") {
		t.Errorf("header %q", got)
	}
	if got := strings.Join(strings.Fields(lines[1]), " "); !strings.HasSuffix(got, "v1 v2 downloading 25%") {
		t.Errorf("row %q", got)
	}
}
