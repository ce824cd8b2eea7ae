package fleetd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/httpapi"
	"remoteler.dev/edge/fleet/linkhealth"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
)

// deviceHooks connect the tunnel server to the device registry and the CA.
type deviceHooks struct {
	// keepalive and liveness, when set, are pushed to every agent.
	keepalive, liveness time.Duration

	auth    *ca.Authority
	reg     *devices.Registry
	cluster string
	ttl     time.Duration
	audit   *slog.Logger
	events  *audit.Log // the audit log; nil records nothing
	log     *slog.Logger
	now     func() time.Time
}

// configure sets the tunnel server's device hooks in cfg.
func (d *deviceHooks) configure(cfg *tunnelsrv.Config) {
	cfg.Authenticate = d.authenticate
	cfg.OnHello = d.hello
	cfg.Recheck = d.recheck
	cfg.OnRenew = d.renew
	cfg.OnDisconnect = d.disconnect
}

func (d *deviceHooks) authenticate(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	id, err := d.auth.Identify(cs.PeerCertificates[0])
	if err != nil {
		return "", err
	}
	if id.Kind != ca.KindDevice {
		return "", fmt.Errorf("a %s certificate cannot open a device tunnel", id.Kind)
	}
	return id.Name, nil
}

func (d *deviceHooks) hello(ctx context.Context, id string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
	dev, err := d.reg.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		d.audit.Warn("device refused", "event", "device.denied", "device_id", id, "name", h.Name, "addr", addr.String(), "reason", "removed")
		d.event(&proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: "device removed from the fleet", Fields: map[string]string{"action": "tunnel", "name": h.Name}})
		return nil, proto.Errorf(proto.CodeForbidden, "device %s was removed from the fleet; join it again with a new token", id)
	}
	if err != nil {
		return nil, proto.Errorf(proto.CodeInternal, "device registry: %v", err)
	}
	if err := h.Check(); err != nil {
		d.audit.Warn("device refused", "event", "device.denied", "device_id", id, "name", dev.Name, "addr", addr.String(),
			"reason", "hello: "+err.Error())
		d.event(&proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: "hello: " + err.Error(), Fields: map[string]string{"action": "tunnel", "name": dev.Name}})
		return nil, proto.Errorf(proto.CodeBadRequest, "hello: %v", err)
	}
	if h.Name != dev.Name {
		d.audit.Warn("device refused", "event", "device.denied", "device_id", id, "name", h.Name, "addr", addr.String(),
			"reason", "hello names another device")
		d.event(&proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: "hello names another device", Fields: map[string]string{"action": "tunnel", "name": h.Name}})
		return nil, proto.Errorf(proto.CodeForbidden, "this certificate belongs to device %q, not %q", dev.Name, h.Name)
	}
	now := d.now().UTC()
	_, err = d.reg.Update(ctx, id, func(dv *devices.Device) error {
		if dv.Connects > 0 && dv.Addr != addr.String() {
			dv.AddrChangedAt = now
		}
		dv.Connects++
		dv.LastSeen, dv.Addr = now, addr.String()
		dv.AgentVersion, dv.OS, dv.Arch = h.AgentVersion, h.OS, h.Arch
		dv.Labels = mergeLabels(h.Labels, dv.TokenLabels)
		dv.Services = cleanServices(h.Services)
		return nil
	})
	if err != nil {
		return nil, proto.Errorf(proto.CodeInternal, "device registry: %v", err)
	}
	skew := time.UnixMilli(h.Time).Sub(now)
	d.audit.Info("device online", "event", "device.online", "device_id", id, "name", dev.Name, "addr", addr.String(),
		"agent_version", h.AgentVersion, "clock_skew", skew.Round(time.Second).String())
	d.event(&proto.AuditEvent{Type: proto.EventDeviceOnline, Outcome: proto.OutcomeSuccess, Device: id, Addr: addr.String(),
		Fields: map[string]string{"name": dev.Name, "agent_version": h.AgentVersion, "clock_skew": skew.Round(time.Second).String()}})
	return &proto.HelloAck{DeviceID: id, ServerTime: now.UnixMilli(),
		KeepaliveMillis: d.keepalive.Milliseconds(), LivenessMillis: d.liveness.Milliseconds()}, nil
}

// recheck refuses a connection whose device was removed while its hello
// was being answered (see tunnelsrv.Config.Recheck): one read of the
// registry per connection.
func (d *deviceHooks) recheck(ctx context.Context, id string) error {
	_, err := d.reg.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return proto.Errorf(proto.CodeForbidden, "device %s was removed from the fleet; join it again with a new token", id)
	}
	if err != nil {
		return proto.Errorf(proto.CodeInternal, "device registry: %v", err)
	}
	return nil
}

// linkSampler measures every tunnel's loss outside blackouts, for the
// device listing's LOSS.
func linkSampler(tunnels *tunnelsrv.Server) *linkhealth.Sampler {
	return &linkhealth.Sampler{Links: func(fn func(string, time.Time, linkhealth.Counters)) {
		tunnels.EachLink(func(id string, since time.Time, st quic.ConnectionStats) {
			fn(id, since, linkhealth.Counters{Sent: st.PacketsSent, Lost: st.PacketsLost, Received: st.PacketsReceived})
		})
	}}
}

// mergeLabels returns the agent's labels overridden by the labels the join
// token fixed: an admin's labels cannot be changed from the device.
func mergeLabels(agent, fixed map[string]string) map[string]string {
	out := maps.Clone(agent)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, fixed)
	return out
}

func (d *deviceHooks) renew(ctx context.Context, id string, req *proto.RenewRequest) *proto.RenewResponse {
	dev, err := d.reg.Get(ctx, id)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeForbidden, "device %s is not in the fleet", id)}
	}
	pub, err := ssh.ParsePublicKey(req.SSHPublicKey)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "bad ssh public key: %v", err)}
	}
	cert, err := d.auth.SignDeviceX509(req.CSR, id, d.ttl)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "%v", err)}
	}
	hostCert, err := d.auth.SignHostSSH(pub, id, httpapi.HostPrincipals(dev.Name, d.cluster, id), d.ttl)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "%v", err)}
	}
	resp := &proto.RenewResponse{Cert: cert, SSHHostCert: hostCert.Marshal()}
	for _, c := range d.auth.CACerts() {
		resp.CACerts = append(resp.CACerts, c.Raw)
	}
	for _, k := range d.auth.UserCAKeys() {
		resp.UserCAKeys = append(resp.UserCAKeys, k.Marshal())
	}
	d.audit.Info("device certificates renewed", "event", "cert.issued", "device_id", id, "name", dev.Name)
	d.event(&proto.AuditEvent{Type: proto.EventCertIssued, Outcome: proto.OutcomeSuccess, Device: id,
		Fields: map[string]string{"name": dev.Name, "kind": "device"}})
	return resp
}

// disconnect records that a device's connection ended: its last-seen time
// is the last time the fleet heard from it, not the time the fleet noticed.
func (d *deviceHooks) disconnect(id string, lastHeard time.Time, err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	if lastHeard.IsZero() {
		lastHeard = d.now()
	}
	if _, uerr := d.reg.Update(context.Background(), id, func(dv *devices.Device) error {
		dv.LastSeen = lastHeard.UTC()
		return nil
	}); uerr != nil && !errors.Is(uerr, store.ErrNotFound) {
		d.log.Warn("update device last seen", "device_id", id, "err", uerr)
	}
	d.audit.Info("device offline", "event", "device.offline", "device_id", id, "reason", strings.TrimSpace(reason))
	d.event(&proto.AuditEvent{Type: proto.EventDeviceOffline, Outcome: proto.OutcomeSuccess, Device: id, Message: strings.TrimSpace(reason)})
}
