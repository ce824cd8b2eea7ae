package kubesrv

import (
	"fmt"
	"io"
	"strings"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
	"remoteler.dev/edge/proto/kubewire"
)

// RecordingSink stores the recordings of Kubernetes terminal sessions
// (*recordings.Store): Create starts recording id of a session on
// deviceID, described by meta.
type RecordingSink interface {
	Create(deviceID, id string, meta proto.RecordingMeta) (io.WriteCloser, error)
}

// terminal is the recording of one kubectl exec -it or attach -it session.
type terminal struct {
	cast  *asciicast.Writer
	file  io.WriteCloser
	input bool // record what the user types too
}

// startRecording opens the recording of the exchange's terminal session
// (kubewire.Exchange.Record); when it cannot, the session goes on
// unrecorded and the audit trail says why.
func (x *exchange) startRecording() kubewire.Terminal {
	s := x.s
	t, err := s.openRecording(x)
	if err != nil {
		s.log.Warn("kubernetes session not recorded", "session", x.id, "err", err)
		ev := x.Ev
		ev.Type, ev.Reason = kubewire.EventRecordingSkipped, err.Error()
		s.audit(ev)
		return nil
	}
	return t
}

// openRecording opens the recording of an exchange's terminal session.
func (s *Server) openRecording(x *exchange) (*terminal, error) {
	g, info := &x.grant.Session, x.Ev.Request
	command := strings.Join(x.query["command"], " ")
	meta := proto.RecordingMeta{
		Session: x.id, User: g.User, Login: g.KubeUser, Cluster: x.grant.Cluster,
		Start: s.cfg.Now().UnixMilli(), Kind: "kube." + info.Subresource, Command: command,
	}
	f, err := s.cfg.Recordings.Create(g.DeviceID, x.id, meta)
	if err != nil {
		return nil, err
	}
	title := fmt.Sprintf("%s %s/%s on %s (%s as %s)", info.Subresource, info.Namespace, info.Name, g.DeviceName, g.User, g.KubeUser)
	cast, err := asciicast.NewWriter(f, asciicast.Header{Width: 80, Height: 24, Command: command, Title: title}, s.cfg.Now)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &terminal{cast: cast, file: f, input: g.RecordInput}, nil
}

// Output records what the cluster sends: the terminal's output.
func (t *terminal) Output(p []byte) { t.cast.Output(p) }

// Input records what the user types, when the user's roles ask for it.
func (t *terminal) Input(p []byte) {
	if t.input {
		t.cast.Input(p)
	}
}

// Resize records a new terminal size.
func (t *terminal) Resize(cols, rows int) { t.cast.Resize(cols, rows) }

// Close ends the recording.
func (t *terminal) Close() error {
	err := t.cast.Flush()
	if cerr := t.file.Close(); err == nil {
		err = cerr
	}
	return err
}
