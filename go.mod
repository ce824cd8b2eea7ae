module remoteler.dev/edge

go 1.26.0

require (
	aead.dev/minisign v0.2.0 // indirect
	github.com/boombuler/barcode v1.0.1-0.20190219062509-6c824513bacc // indirect
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/creack/pty v1.1.24 // indirect
	github.com/fxamacker/cbor/v2 v2.9.6 // indirect
	github.com/kr/fs v0.1.0 // indirect
	github.com/minio/selfupdate v0.6.0 // indirect
	github.com/pkg/sftp v1.13.12 // indirect
	github.com/pquerna/otp v1.5.0 // indirect
	github.com/quic-go/quic-go v0.65.0 // indirect
	github.com/x448/float16 v0.8.4 // indirect
	go.etcd.io/bbolt v1.5.0 // indirect
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/term v0.47.0 // indirect
	sigs.k8s.io/yaml v1.6.0 // indirect
)
