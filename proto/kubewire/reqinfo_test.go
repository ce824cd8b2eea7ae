package kubewire

import (
	"net/url"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		method, path string
		want         RequestInfo
	}{
		{"GET", "/api/v1/namespaces/default/pods", RequestInfo{Verb: "list", APIVersion: "v1", Namespace: "default", Resource: "pods", IsResource: true}},
		{"GET", "/api/v1/namespaces/default/pods?watch=true", RequestInfo{Verb: "watch", APIVersion: "v1", Namespace: "default", Resource: "pods", IsResource: true}},
		{"GET", "/api/v1/watch/namespaces/kube-system/configmaps", RequestInfo{Verb: "watch", APIVersion: "v1", Namespace: "kube-system", Resource: "configmaps", IsResource: true}},
		{"GET", "/apis/apps/v1/namespaces/ns/deployments/web", RequestInfo{Verb: "get", APIGroup: "apps", APIVersion: "v1", Namespace: "ns", Resource: "deployments", Name: "web", IsResource: true}},
		{"PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale", RequestInfo{Verb: "patch", APIGroup: "apps", APIVersion: "v1", Namespace: "ns", Resource: "deployments", Name: "web", Subresource: "scale", IsResource: true}},
		{"POST", "/api/v1/namespaces/ns/pods/p/exec?command=sh", RequestInfo{Verb: "create", APIVersion: "v1", Namespace: "ns", Resource: "pods", Name: "p", Subresource: "exec", IsResource: true}},
		{"DELETE", "/api/v1/namespaces/ns/configmaps", RequestInfo{Verb: "deletecollection", APIVersion: "v1", Namespace: "ns", Resource: "configmaps", IsResource: true}},
		{"DELETE", "/api/v1/namespaces/ns", RequestInfo{Verb: "delete", APIVersion: "v1", Namespace: "ns", Resource: "namespaces", Name: "ns", IsResource: true}},
		{"PUT", "/api/v1/namespaces/ns/finalize", RequestInfo{Verb: "update", APIVersion: "v1", Namespace: "ns", Resource: "namespaces", Name: "ns", Subresource: "finalize", IsResource: true}},
		{"POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", RequestInfo{Verb: "create", APIGroup: "authorization.k8s.io", APIVersion: "v1", Resource: "selfsubjectaccessreviews", IsResource: true}},
		{"GET", "/api/v1", RequestInfo{Verb: "get", APIVersion: "v1"}},
		{"GET", "/version", RequestInfo{Verb: "get"}},
		{"GET", "/apis", RequestInfo{Verb: "get"}},
		{"GET", "/", RequestInfo{Verb: "get"}},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			u, err := url.Parse(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := ParseRequest(tt.method, u); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add("GET", "/api/v1/namespaces/default/pods?watch=1")
	f.Add("DELETE", "/apis/apps/v1/namespaces//deployments/x/y/z")
	f.Fuzz(func(t *testing.T, method, path string) {
		u, err := url.Parse(path)
		if err != nil {
			return
		}
		info := ParseRequest(method, u)
		if info.IsResource && info.APIVersion == "" {
			t.Fatalf("resource request without a version: %+v", info)
		}
	})
}
