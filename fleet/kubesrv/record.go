package kubesrv

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
)

// Channels of Kubernetes' remote command protocols over WebSocket
// (v4.channel.k8s.io, v5.channel.k8s.io): the first byte of each binary
// message names its channel.
const (
	chStdin  = 0
	chStdout = 1
	chStderr = 2
	chError  = 3
	chResize = 4
)

// channelProtocols are the WebSocket subprotocols whose channels the fleet
// follows; the base64 variants are passed through unrecorded.
var channelProtocols = map[string]bool{"v4.channel.k8s.io": true, "v5.channel.k8s.io": true}

// maxResizeMessage bounds a terminal size message.
const maxResizeMessage = 4 << 10

// channelTap follows one direction of a remote command WebSocket and hands
// each channel's data to out, and terminal sizes to resized.
type channelTap struct {
	ws      wsStream
	ch      int // the current message's channel; -1 before its first byte
	resize  []byte
	out     func(ch int, p []byte)
	resized func(cols, rows int)
}

func newChannelTap(out func(ch int, p []byte), resized func(cols, rows int)) *channelTap {
	t := &channelTap{ch: -1, out: out, resized: resized}
	t.ws.data, t.ws.end = t.data, t.end
	return t
}

func (t *channelTap) data(start bool, p []byte) {
	if start {
		t.ch, t.resize = -1, t.resize[:0]
	}
	if t.ch == -1 {
		if len(p) == 0 {
			return
		}
		t.ch, p = int(p[0]), p[1:]
	}
	if len(p) == 0 {
		return
	}
	if t.ch == chResize {
		if len(t.resize)+len(p) <= maxResizeMessage {
			t.resize = append(t.resize, p...)
		}
		return
	}
	if t.out != nil {
		t.out(t.ch, p)
	}
}

func (t *channelTap) end() {
	if t.ch == chResize && t.resized != nil {
		var size struct{ Width, Height uint16 }
		if json.Unmarshal(t.resize, &size) == nil && size.Width > 0 && size.Height > 0 {
			t.resized(int(size.Width), int(size.Height))
		}
	}
	t.ch = -1
}

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
	if ch == chStdout || ch == chStderr {
		t.cast.Output(p)
	}
}

// fromUser records what the user types, when asked to.
func (t *terminal) fromUser(ch int, p []byte) {
	if ch == chStdin && t.input {
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
