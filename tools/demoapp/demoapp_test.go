package demoapp

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestPattern(t *testing.T) {
	p := &Pattern{Size: 3*period + 17}
	b, err := io.ReadAll(p)
	if err != nil || int64(len(b)) != p.Size {
		t.Fatalf("read %d bytes, %v", len(b), err)
	}
	for i := range int64(len(b)) {
		if b[i] != At(i) {
			t.Fatalf("byte %d is %d, want %d", i, b[i], At(i))
		}
	}
	p.Seek(period+5, io.SeekStart)
	part := make([]byte, 10)
	io.ReadFull(p, part)
	if !bytes.Equal(part, b[period+5:period+15]) {
		t.Error("a read after a seek does not match")
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler(nil))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/download?size=1000", nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || len(b) != 100 || b[0] != At(100) {
		t.Errorf("range: %s, %d bytes", resp.Status, len(b))
	}
	resp, err = http.Post(srv.URL+"/upload", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"bytes":5`) {
		t.Errorf("upload: %s", b)
	}
}
