package sshd

import (
	"context"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
)

// inputFrom returns r, teeing what is read into the recorder's input
// events when it records input.
func inputFrom(r io.Reader, rec services.Recorder) io.Reader {
	if ir, ok := rec.(services.InputRecorder); ok {
		return io.TeeReader(r, inputWriter{ir})
	}
	return r
}

type inputWriter struct{ ir services.InputRecorder }

func (w inputWriter) Write(p []byte) (int, error) {
	w.ir.Input(p)
	return len(p), nil
}

// audit records ev through Config.Audit; an error means the action must
// not go ahead.
func (s *Server) audit(ctx context.Context, ev *proto.AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if ev.Outcome == "" {
		ev.Outcome = proto.OutcomeSuccess
	}
	return s.cfg.Audit(ctx, ev)
}

// deny records a refusal; the refusal stands whatever the audit says.
func (s *Server) deny(ctx context.Context, what, reason string) {
	s.audit(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Message: reason,
		Fields: map[string]string{"action": what}})
}

// begin records a session command that is about to start and sets up its
// recording; a non-nil error refuses the request.
func (s *session) begin(info services.SessionInfo) error {
	typ := proto.EventExec
	if info.Kind == "sftp" || info.Kind == "scp" {
		typ = proto.EventFileTransfer
	}
	fields := map[string]string{"kind": info.Kind, "pty": strconv.FormatBool(s.pty != nil)}
	if info.Command != "" {
		fields["command"] = info.Command
	}
	if info.Kind == "sftp" || info.Kind == "scp" {
		fields["protocol"] = info.Kind
	}
	if err := s.c.s.audit(s.ctx, &proto.AuditEvent{Type: typ, Fields: fields}); err != nil {
		s.log.Warn("sshd: session refused: its audit event could not be written", "err", err)
		return err
	}
	s.kind, s.command, s.began = info.Kind, info.Command, time.Now()
	// Every shell and command is recorded, with a terminal or without
	// (ssh -T host can run an interactive program too); file copies are
	// audited as transfers instead.
	if (info.Kind == "shell" || info.Kind == "exec") && s.c.s.cfg.Record != nil {
		if s.pty != nil {
			info.Term, info.Cols, info.Rows = s.pty.Term, int(clamp16(s.pty.Cols)), int(clamp16(s.pty.Rows))
		}
		s.rec = s.c.s.cfg.Record(s.ctx, info)
	}
	return nil
}

// end records how a session command ended and closes its recording.
func (s *session) end(info exitInfo) {
	if s.rec != nil {
		if err := s.rec.Close(); err != nil {
			s.log.Warn("sshd: session recording", "err", err)
		}
	}
	fields := map[string]string{
		"kind":      s.kind,
		"bytes_out": strconv.FormatInt(s.out.Load(), 10),
		"duration":  time.Since(s.began).Round(time.Millisecond).String(),
	}
	if s.command != "" {
		fields["command"] = s.command
	}
	outcome := proto.OutcomeSuccess
	switch {
	case info.err != nil:
		outcome, fields["error"] = proto.OutcomeFailure, info.err.Error()
	case info.signal != "":
		fields["signal"] = info.signal
	default:
		fields["status"] = strconv.Itoa(info.status)
	}
	if s.rec != nil {
		fields["recorded"] = "true"
	}
	s.c.s.audit(s.ctx, &proto.AuditEvent{Type: proto.EventExecEnd, Outcome: outcome, Fields: fields})
}

// outputTo returns the writer a command's output goes through on its way
// to w: it counts the bytes and, for a terminal, records them once sent.
func (c *command) outputTo(w io.Writer) io.Writer {
	return &tapWriter{w: w, n: c.out, rec: c.rec}
}

type tapWriter struct {
	w   io.Writer
	n   *atomic.Int64
	rec services.Recorder
}

func (t *tapWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if t.n != nil {
		t.n.Add(int64(n))
	}
	if t.rec != nil && n > 0 {
		t.rec.Output(p[:n])
	}
	return n, err
}

// tapRW counts what an in-process sftp server writes to its channel.
type tapRW struct {
	io.ReadWriteCloser
	n *atomic.Int64
}

func (t *tapRW) Write(p []byte) (int, error) {
	n, err := t.ReadWriteCloser.Write(p)
	t.n.Add(int64(n))
	return n, err
}
