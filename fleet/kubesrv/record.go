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

// startRecording opens the recording of an exchange's terminal session.
func (s *Server) startRecording(x *exchange) (*terminal, error) {
	g, info := &x.grant.Session, x.ev.Request
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

// fromCluster records what the cluster sends: the terminal's output.
func (t *terminal) fromCluster(ch int, p []byte) {
	if ch == kubewire.ChStdout || ch == kubewire.ChStderr {
		t.cast.Output(p)
	}
}

// fromUser records what the user types, when asked to.
func (t *terminal) fromUser(ch int, p []byte) {
	if ch == kubewire.ChStdin && t.input {
		t.cast.Input(p)
	}
}

func (t *terminal) close() error {
	err := t.cast.Flush()
	if cerr := t.file.Close(); err == nil {
		err = cerr
	}
	return err
}
