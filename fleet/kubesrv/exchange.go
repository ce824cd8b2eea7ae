package kubesrv

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
)

// exchange is one request on its way through Serve: what the audit records
// of it (kubewire.Exchange), and, for a long-running request (a watch, a
// followed log, an upgraded exec, attach or port-forward), the live
// session.
type exchange struct {
	*kubewire.Exchange
	s     *Server
	grant broker.Grant
	query url.Values
	// id names the session.
	id   string
	live *broker.Session
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// auditRefusal is what a user whose request could not be recorded sees.
const auditRefusal = "the fleet cannot write its audit log right now, so it does not pass on Kubernetes requests; try again later"

// Serve forwards r to the cluster g names, as the Kubernetes user and
// groups g.Session names (the caller resolved them: see Resolve). r.URL.Path (and RawPath) must
// already be the cluster's API path ("/api/v1/pods"): the caller strips its
// own prefix.
//
// Nothing is forwarded or answered unrecorded: a request that changes the
// cluster and a long-running one have their start event committed before
// they are forwarded; every other request has its event committed before
// its answer is passed on. When the audit log cannot be written, the user
// gets a 503 Status instead.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, g *broker.Grant) {
	x := &exchange{s: s, grant: *g, query: r.URL.Query()}
	gs := &x.grant.Session
	x.Exchange = kubewire.NewExchange(r, kubewire.Event{
		User: gs.User, Cluster: gs.DeviceName, DeviceID: gs.DeviceID,
		KubeUser: gs.KubeUser, KubeGroups: gs.KubeGroups, ClientAddr: gs.ClientAddr,
	}, s.cfg.Now)
	x.Audit, x.Log = s.audit, s.log
	if s.cfg.Recordings != nil {
		x.Record = x.startRecording
	}
	proxy := s.device
	if gs.DeviceID == "" {
		if s.local == nil {
			kubewire.WriteStatus(w, r, http.StatusNotFound, fmt.Sprintf("no Kubernetes cluster %q", gs.DeviceName))
			return
		}
		proxy = s.local
	} else if !s.cfg.Broker.Online(gs.DeviceID) {
		x.Refused(http.StatusServiceUnavailable, "")
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, fmt.Sprintf("device %q is offline; it reconnects by itself when its link is back", gs.DeviceName))
		return
	}
	ctx := r.Context()
	if !gs.Expires.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, gs.Expires)
		defer cancel()
	}
	ctx, x.Cancel = context.WithCancelCause(ctx)
	defer x.Cancel(nil)
	if kind := x.Ev.Kind; kind != "" {
		x.id = broker.NewID()
		gs.ID, gs.Kind, gs.Service = x.id, kind, proto.ServiceKube
		x.Ev.Session = x.id
	}
	if x.Begin() != nil {
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
		return
	}
	if x.Ev.Kind != "" {
		live, err := s.cfg.Broker.Start(ctx, &x.grant, broker.StartOptions{End: x.End, NoEvents: true})
		if err != nil {
			ev := x.Ev
			ev.Type, ev.Code, ev.Reason = kubewire.EventSessionEnd, http.StatusUnauthorized, err.Error()
			s.audit(ev)
			kubewire.WriteStatus(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		x.live = live
	}
	tap := &kubewire.ResponseTap{ResponseWriter: w, Follow: x.Follow}
	// Deferred: the proxy ends a response it could not finish (a watch
	// whose client left, or that the fleet ended) by panicking with
	// http.ErrAbortHandler.
	defer x.finish(tap)
	ctx = context.WithValue(ctx, exchangeKey{}, x)
	ctx = context.WithValue(ctx, grantKey{}, &x.grant)
	proxy.ServeHTTP(tap, r.WithContext(ctx))
}

// modifyResponse sees the cluster's answer before it is passed on
// (kubewire.Exchange.Answered).
func (s *Server) modifyResponse(resp *http.Response) error {
	x := exchangeOf(resp.Request.Context())
	if x == nil {
		return nil
	}
	return x.Answered(resp)
}

// finish records how the request or session ended (kubewire.Exchange's
// Finish: a JSON watch the fleet ended ends with an ERROR event that
// carries a Status saying why, as an API server ends a watch it cannot go
// on with), and takes the session out of the registry.
func (x *exchange) finish(tap *kubewire.ResponseTap) {
	p := recover()
	if p != nil && p != http.ErrAbortHandler {
		panic(p)
	}
	reason, p := x.Finish(tap, p)
	if x.live != nil {
		x.live.DoneSilently(reason)
	}
	if p != nil {
		panic(p)
	}
}
