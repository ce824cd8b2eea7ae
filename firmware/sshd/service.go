package sshd

import (
	"context"
	"net"

	"remoteler.dev/edge/proto"
)

// The Server is the agent's "ssh" service (firmware/services).

// Name is the service's name in the agent's registry.
func (s *Server) Name() string { return proto.ServiceSSH }

// Check refuses a stream whose header names no login: the fleet allows a
// user one login per session.
func (s *Server) Check(h *proto.StreamHeader) error {
	if h.Identity.Login == "" {
		return proto.Errorf(proto.CodeBadRequest, "stream header names no login")
	}
	return nil
}

// Serve serves one brokered SSH connection (ServeConn).
func (s *Server) Serve(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	log := s.log.With("session", h.SessionID, "user", h.Identity.User, "login", h.Identity.Login)
	log.Info("ssh session brokered", "client", h.ClientAddr)
	if err := s.ServeConn(ctx, conn, h.Identity); err != nil {
		log.Info("ssh connection ended", "err", err)
	}
}

// EnforcesExpiry says the server ends connections at the user's expiry
// itself, telling the user why.
func (s *Server) EnforcesExpiry() bool { return true }
