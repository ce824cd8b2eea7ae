package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// UnreachableError says the fleet could not be reached at all (no TCP
// connection).
type UnreachableError struct {
	Addr string // HOST:PORT
	Err  error  // the dial error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the fleet at %s: %s; is fleetd running?", e.Addr, dialReason(e.Err))
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// dialReason trims a dial error to its cause ("connection refused") when
// the rest only repeats the address.
func dialReason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// Plain returns the *UnreachableError or *ExpiredError inside err, if any,
// so that a command shows the fix without the layers of operations above
// it ("ls: cannot reach the fleet ..." becomes "cannot reach the fleet
// ..."). Other errors come back as they are.
func Plain(err error) error {
	var unreachable *UnreachableError
	if errors.As(err, &unreachable) {
		return unreachable
	}
	var expired *ExpiredError
	if errors.As(err, &expired) {
		return expired
	}
	return err
}

// ExpiredError says the client certificate is past its NotAfter. The client
// returns it before sending anything.
type ExpiredError struct {
	NotAfter time.Time
	Hint     string // what to do, e.g. "run tsh login"
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("your certificate expired at %s; %s", e.NotAfter.Local().Format("2006-01-02 15:04:05 MST"), e.Hint)
}

// checkExpiry returns an *ExpiredError when the client certificate in the
// TLS config has expired.
func (c *Client) checkExpiry() error {
	if len(c.tls.Certificates) == 0 || len(c.tls.Certificates[0].Certificate) == 0 {
		return nil
	}
	leaf := c.tls.Certificates[0].Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.tls.Certificates[0].Certificate[0]); err != nil {
			return fmt.Errorf("client: parse client certificate: %w; %s", err, c.cfg.LoginHint)
		}
	}
	if c.cfg.Now().After(leaf.NotAfter) {
		return &ExpiredError{NotAfter: leaf.NotAfter, Hint: c.cfg.LoginHint}
	}
	return nil
}

// transportError turns an error from dialing, TLS or HTTP into one that
// says what went wrong and what to do.
func (c *Client) transportError(op string, err error) error {
	var unreachable *UnreachableError
	if errors.As(err, &unreachable) {
		return unreachable
	}
	if errors.Is(err, pin.ErrMismatch) {
		return fmt.Errorf("client: connect to %s: %w", c.cfg.Addr, pin.ErrMismatch)
	}
	var verify *tls.CertificateVerificationError
	if errors.As(err, &verify) {
		return fmt.Errorf("client: the server at %s presented a certificate this client does not trust (%v); check that %s is your fleet, and log in with --ca-pin=sha256:... (fleetctl status shows the fleet's pin)", c.cfg.Addr, verify.Err, c.cfg.Addr)
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "remote error" {
		return fmt.Errorf("client: the fleet at %s refused this client's certificate (%v); %s", c.cfg.Addr, opErr.Err, c.cfg.LoginHint)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("client: %s: the fleet at %s did not answer in time; is fleetd running and reachable? (%w)", op, c.cfg.Addr, err)
	}
	var recordErr tls.RecordHeaderError
	if errors.As(err, &recordErr) {
		return fmt.Errorf("client: %s: %s does not speak TLS; is it fleetd's HTTPS address (HOST:PORT)?", op, c.cfg.Addr)
	}
	return fmt.Errorf("client: %s at %s: %w", op, c.cfg.Addr, err)
}

// errorFromResponse builds the *api.Error of a non-2xx answer. A body that
// is not an api.Error (a proxy's HTML page, say) still gives a code from the
// status and a message that quotes the start of the body.
func errorFromResponse(status int, body []byte) *api.Error {
	var e api.Error
	isJSON := json.Unmarshal(body, &e) == nil
	if !isJSON {
		e = api.Error{}
	}
	if e.Code == "" {
		e.Code = codeForStatus(status)
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("the fleet answered %d %s", status, http.StatusText(status))
		if s := snippet(body); s != "" && !isJSON {
			e.Message += ": " + s
		}
	}
	return &e
}

// codeForStatus maps an HTTP status to the api error code a fleet would
// have sent with it.
func codeForStatus(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return api.CodeUnauthorized
	case status == http.StatusForbidden:
		return api.CodeForbidden
	case status == http.StatusNotFound:
		return api.CodeNotFound
	case status == http.StatusConflict:
		return api.CodeConflict
	case status >= 500:
		return api.CodeInternal
	default:
		return api.CodeBadRequest
	}
}

// snippet returns the first line of a body, printable and short.
func snippet(body []byte) string {
	s, _, _ := strings.Cut(string(body), "\n")
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}
