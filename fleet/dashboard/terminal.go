package dashboard

import (
	"crypto/subtle"
	"net/http"
	"slices"

	"remoteler.dev/edge/proto"
)

// terminalView is the terminal's page.
type terminalView struct {
	Device    string
	DeviceURL string
	Login     string
	Logins    []string
	// SocketURL is the websocket's path and query (the page adds the
	// terminal's size).
	SocketURL string
}

// terminalPage answers GET /web/devices/{name}/terminal?login=L: the page
// that opens a terminal on the device in the browser.
func (s *Server) terminalPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	q := r.URL.Query()
	if err := onlyKnown(q, "login"); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	d, ok := s.findDevice(w, r, v)
	if !ok {
		return
	}
	logins := v.checker.DeviceLogins(d.Labels)
	login := q.Get("login")
	if login == "" && len(logins) > 0 {
		login = logins[0]
	}
	if _, err := checkLogin(login); err != nil || !slices.Contains(logins, login) {
		s.message(w, r, v, http.StatusForbidden, "No such login", "Your roles give you no login "+truncate(login, 32)+" on this device.")
		return
	}
	if s.cfg.Terminal == nil || !slices.Contains(d.Services, proto.ServiceSSH) {
		s.message(w, r, v, http.StatusNotFound, "No terminal", "This device offers no terminal.")
		return
	}
	tv := terminalView{Device: d.Name, DeviceURL: deviceURL(d.Name), Login: login, Logins: logins,
		SocketURL: deviceURL(d.Name) + "/terminal/ws?login=" + login + "&csrf=" + v.sess.CSRF}
	s.page(w, r, v, http.StatusOK, "Terminal: "+login+"@"+d.Name, "devices", "terminal", tv)
}

// terminalSocket answers GET /web/devices/{name}/terminal/ws: the
// terminal's websocket. Opening it starts a shell, so it is checked like a
// state-changing request: it must come from the fleet's own origin and
// carry the session's CSRF token. The terminal itself (fleet/webterm)
// authorises again through the broker.
func (s *Server) terminalSocket(w http.ResponseWriter, r *http.Request, v *viewer) {
	q := r.URL.Query()
	if err := onlyKnown(q, "login", "csrf", "cols", "rows"); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	origin := r.Header.Get("Origin")
	token := q.Get("csrf")
	if origin == "" || origin != s.cfg.Origin || token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(v.sess.CSRF)) != 1 {
		s.record(r, v, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied,
			Message: "a terminal asked for from elsewhere than the fleet's page (origin or CSRF check)",
			Fields:  map[string]string{"action": "terminal", "device_name": r.PathValue("name"), "origin": truncate(origin, 100)}})
		http.Error(w, "this terminal was not asked for from the fleet's own page", http.StatusForbidden)
		return
	}
	login, err := checkLogin(q.Get("login"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cols, err := checkDim("cols", q.Get("cols"), 80)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rows, err := checkDim("rows", q.Get("rows"), 24)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d, ok := s.findDevice(w, r, v)
	if !ok {
		return
	}
	if s.cfg.Terminal == nil {
		http.Error(w, "this fleet offers no terminal in the browser", http.StatusNotFound)
		return
	}
	s.cfg.Terminal(w, r, TerminalRequest{User: v.user, Checker: v.checker, Device: d.Name, Login: login,
		Expires: v.sess.Expires, ClientAddr: r.RemoteAddr, Cols: cols, Rows: rows})
}
