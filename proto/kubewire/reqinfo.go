package kubewire

import (
	"net/http"
	"net/url"
	"strings"
)

// RequestInfo is what a Kubernetes API request does, for the audit log:
// the Kubernetes authorization verb and the object it names.
type RequestInfo struct {
	// Verb is get, list, watch, create, update, patch, delete or
	// deletecollection for resource requests, else the lower-case method.
	Verb        string
	APIGroup    string // "" for the core group
	APIVersion  string
	Namespace   string
	Resource    string
	Subresource string
	Name        string
	// IsResource is false for non-resource paths (/version, /apis,
	// /openapi/v3, /healthz ...).
	IsResource bool
}

// namespaceSubresources are subresources of the namespace object itself.
var namespaceSubresources = map[string]bool{"status": true, "finalize": true}

// ParseRequest works out what a request to a Kubernetes API server does, the
// way the API server's own request-info resolver does, without importing
// it. Anything it does not recognise is a non-resource request.
func ParseRequest(method string, u *url.URL) RequestInfo {
	info := RequestInfo{Verb: strings.ToLower(method)}
	parts := splitPath(u.Path)
	if len(parts) < 2 {
		return info
	}
	switch parts[0] {
	case "api":
		info.APIVersion = parts[1]
		parts = parts[2:]
	case "apis":
		if len(parts) < 3 {
			return info
		}
		info.APIGroup, info.APIVersion = parts[1], parts[2]
		parts = parts[3:]
	default:
		return info
	}
	if len(parts) == 0 {
		return info // discovery: /api/v1, /apis/apps/v1
	}
	info.IsResource = true
	watch := false
	if parts[0] == "watch" { // the deprecated /watch/ path prefix
		watch = true
		parts = parts[1:]
	}
	if len(parts) > 0 && parts[0] == "namespaces" && len(parts) > 1 {
		info.Namespace = parts[1]
		if len(parts) > 2 && !namespaceSubresources[parts[2]] {
			parts = parts[2:]
		}
	}
	if len(parts) > 0 {
		info.Resource = parts[0]
	}
	if len(parts) > 1 {
		info.Name = parts[1]
	}
	if len(parts) > 2 {
		info.Subresource = parts[2]
	}
	q := u.Query()
	if w := q.Get("watch"); w == "true" || w == "1" {
		watch = true
	}
	switch method {
	case http.MethodGet, http.MethodHead:
		switch {
		case watch:
			info.Verb = "watch"
		case info.Name == "":
			info.Verb = "list"
		default:
			info.Verb = "get"
		}
	case http.MethodPost:
		info.Verb = "create"
	case http.MethodPut:
		info.Verb = "update"
	case http.MethodPatch:
		info.Verb = "patch"
	case http.MethodDelete:
		if info.Name == "" {
			info.Verb = "deletecollection"
		} else {
			info.Verb = "delete"
		}
	}
	return info
}

// splitPath splits an URL path into its non-empty elements.
func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}
