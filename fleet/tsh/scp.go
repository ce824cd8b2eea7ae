package tsh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
)

// scpSpec is one side of a copy: a local path, or [LOGIN@]DEVICE:PATH.
type scpSpec struct {
	remote bool
	login  string
	device string
	path   string
}

// parseSpec reads a side of a copy like scp does: it is remote when it has
// a colon before any slash. Prefix a local path holding a colon with "./".
func parseSpec(s, cluster string) scpSpec {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[:i], '/') {
		return scpSpec{path: s}
	}
	login, device := splitTarget(s[:i], cluster)
	return scpSpec{remote: true, login: login, device: device, path: s[i+1:]}
}

func (r *runner) scpCommand() *cobra.Command {
	var recursive, quiet bool
	var cluster string
	cmd := &cobra.Command{
		Use:   "scp [-r] [-q] SRC... DST",
		Short: "Copy files to or from a device",
		Long: `Copy files between this machine and a device over SFTP through the fleet.
A remote side is [LOGIN@]DEVICE:PATH (a colon before any slash); prefix a
local path that holds a colon with "./". All remote sides must be on one
device as one login, and one side must be local.`,
		Example: `  tsh scp firmware.bin root@pi-1:/tmp/
  tsh scp -r pi@pi-1:/var/log/app ./logs`,
		Args: cli.RangeArgs(2, -1, "a source and a destination"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if strings.ContainsAny(toComplete, ":/") {
				return nil, cobra.ShellCompDirectiveDefault // a remote path, or a local file
			}
			devices, d := r.completeTarget(":")(cmd, nil, toComplete)
			if len(devices) == 0 {
				return nil, cobra.ShellCompDirectiveDefault
			}
			return devices, d
		},
		RunE: func(cmd *cobra.Command, args []string) error { return r.scp(cmd, args, recursive, quiet, cluster) },
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories recursively")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "do not show progress")
	r.clusterFlag(cmd, &cluster)
	return cmd
}

func (r *runner) scp(cmd *cobra.Command, pos []string, recursiveFlag, quietFlag bool, cluster string) error {
	ctx := cmd.Context()
	recursive, quiet := &recursiveFlag, &quietFlag
	st, err := r.site(cluster)
	if err != nil {
		return err
	}
	var srcs []scpSpec
	for _, a := range pos[:len(pos)-1] {
		srcs = append(srcs, parseSpec(a, st.name()))
	}
	dst := parseSpec(pos[len(pos)-1], st.name())
	// All remote sides must be the same device and login, on one side.
	remote := dst
	for _, s := range srcs {
		switch {
		case s.remote == dst.remote && s.remote:
			return errors.New("scp: copying between two devices is not supported; copy to this machine first")
		case s.remote == dst.remote:
			return fmt.Errorf("scp: neither %s nor the destination is remote; a remote side is [LOGIN@]DEVICE:PATH", s.path)
		case s.remote && (s.device != srcs[0].device || s.login != srcs[0].login):
			return errors.New("scp: all sources must be on the same device, as the same login")
		case s.remote:
			remote = s
		}
	}
	if remote.device == "" {
		return cli.Usagef(cmd, "name a device before the colon")
	}
	login := remote.login
	if login == "" {
		login = r.localUser()
	}
	c, err := r.client(st)
	if err != nil {
		return err
	}
	defer c.Close()
	sc, err := r.dialSSH(ctx, c, st, remote.device, login)
	if err != nil {
		return fmt.Errorf("scp: %w", err)
	}
	defer sc.Close()
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	// Concurrent writes keep many 32 KB writes in flight; one at a time, an
	// upload over a 50 ms link would crawl at ~0.6 MB/s.
	sf, err := sftp.NewClient(sc, sftp.UseConcurrentWrites(true))
	if err != nil {
		return fmt.Errorf("scp: start SFTP on %s: %w; does the device's agent serve SFTP?", remote.device, err)
	}
	defer sf.Close()
	_, errTerm := cli.Terminal(r.stdio.Err)
	cp := &copier{sf: sf, recursive: *recursive, progress: errTerm && !*quiet, err: r.stdio.Err, now: r.stdio.Now}
	if dst.remote {
		err = cp.upload(srcs, dst.path)
	} else {
		err = cp.download(srcs, dst.path)
	}
	if err != nil {
		return fmt.Errorf("scp: %w", err)
	}
	return nil
}

// copier copies files over one SFTP session.
type copier struct {
	sf        *sftp.Client
	recursive bool
	progress  bool
	err       io.Writer
	now       func() time.Time
}

// upload copies local sources to the remote path dst.
func (c *copier) upload(srcs []scpSpec, dst string) error {
	if dst == "" {
		dst = "."
	}
	dstIsDir := false
	if fi, err := c.sf.Stat(dst); err == nil && fi.IsDir() {
		dstIsDir = true
	}
	if len(srcs) > 1 && !dstIsDir {
		return fmt.Errorf("%s is not a directory on the device; with several sources the destination must be one", dst)
	}
	for _, s := range srcs {
		fi, err := os.Stat(s.path)
		if err != nil {
			return err
		}
		target := dst
		if dstIsDir {
			target = path.Join(dst, filepath.Base(s.path))
		}
		if !fi.IsDir() {
			if err := c.put(s.path, target, fi); err != nil {
				return err
			}
			continue
		}
		if !c.recursive {
			return fmt.Errorf("%s is a directory; use -r", s.path)
		}
		root := s.path
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			t := path.Join(target, filepath.ToSlash(rel))
			switch {
			case d.IsDir():
				if err := c.sf.MkdirAll(t); err != nil {
					return fmt.Errorf("create %s on the device: %w", t, err)
				}
				return nil
			case d.Type().IsRegular():
				fi, err := d.Info()
				if err != nil {
					return err
				}
				return c.put(p, t, fi)
			default:
				fmt.Fprintf(c.err, "tsh scp: skipping %s: not a regular file or directory\n", p)
				return nil
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) put(local, remote string, fi fs.FileInfo) error {
	in, err := os.Open(local)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := c.sf.OpenFile(remote, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s on the device: %w", remote, err)
	}
	defer out.Close()
	var r io.Reader = in
	if c.progress {
		pr := c.newProgress(filepath.Base(local), fi.Size())
		defer pr.finish()
		r = sizedReader{io.TeeReader(in, pr), fi.Size()}
	}
	if _, err := out.ReadFrom(r); err != nil {
		return fmt.Errorf("write %s on the device: %w", remote, err)
	}
	if err := out.Chmod(fi.Mode().Perm()); err != nil {
		return fmt.Errorf("set the mode of %s on the device: %w", remote, err)
	}
	return out.Close()
}

// download copies remote sources to the local path dst.
func (c *copier) download(srcs []scpSpec, dst string) error {
	dstIsDir := false
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		dstIsDir = true
	}
	if len(srcs) > 1 && !dstIsDir {
		return fmt.Errorf("%s is not a directory; with several sources the destination must be one", dst)
	}
	for _, s := range srcs {
		src := s.path
		if src == "" {
			src = "."
		}
		fi, err := c.sf.Stat(src)
		if err != nil {
			return fmt.Errorf("%s on the device: %w", src, err)
		}
		target := dst
		if dstIsDir {
			target = filepath.Join(dst, path.Base(src))
		}
		if !fi.IsDir() {
			if err := c.get(src, target, fi); err != nil {
				return err
			}
			continue
		}
		if !c.recursive {
			return fmt.Errorf("%s is a directory on the device; use -r", src)
		}
		w := c.sf.Walk(src)
		for w.Step() {
			if err := w.Err(); err != nil {
				return fmt.Errorf("walk %s on the device: %w", w.Path(), err)
			}
			rel := remoteRel(src, w.Path())
			if !filepath.IsLocal(filepath.FromSlash(rel)) && rel != "" {
				return fmt.Errorf("the device listed %q under %s; refusing to write outside %s", w.Path(), src, target)
			}
			t := filepath.Join(target, filepath.FromSlash(rel))
			st := w.Stat()
			switch {
			case st.IsDir():
				if err := os.MkdirAll(t, 0o755); err != nil {
					return err
				}
			case st.Mode().IsRegular():
				if err := c.get(w.Path(), t, st); err != nil {
					return err
				}
			default:
				fmt.Fprintf(c.err, "tsh scp: skipping %s: not a regular file or directory\n", w.Path())
			}
		}
	}
	return nil
}

func (c *copier) get(remote, local string, fi fs.FileInfo) error {
	in, err := c.sf.Open(remote)
	if err != nil {
		return fmt.Errorf("open %s on the device: %w", remote, err)
	}
	defer in.Close()
	out, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	defer out.Close()
	var w io.Writer = out
	if c.progress {
		pr := c.newProgress(path.Base(remote), fi.Size())
		defer pr.finish()
		w = io.MultiWriter(out, pr)
	}
	if _, err := in.WriteTo(w); err != nil {
		return fmt.Errorf("read %s from the device: %w", remote, err)
	}
	return out.Close()
}

// sizedReader tells sftp how much is left to send, so it can write
// concurrently through the progress wrapper.
type sizedReader struct {
	io.Reader
	size int64
}

// Size returns the length of the whole file.
func (r sizedReader) Size() int64 { return r.size }

// progress draws "name  42%  1.2 MB" on a terminal, at most every 100ms.
type progress struct {
	w     io.Writer
	now   func() time.Time
	name  string
	total int64
	done  int64
	last  time.Time
}

func (c *copier) newProgress(name string, total int64) *progress {
	return &progress{w: c.err, now: c.now, name: name, total: total}
}

func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if now := p.now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	pct := 100
	if p.total > 0 {
		pct = int(p.done * 100 / p.total)
	}
	fmt.Fprintf(p.w, "\r%-40.40s %3d%% %10s", p.name, pct, fmtBytes(p.done))
}

func (p *progress) finish() {
	p.draw()
	fmt.Fprintln(p.w)
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// remoteRel returns p relative to root, both remote (slash) paths that the
// SFTP walker joined; "" for root itself.
func remoteRel(root, p string) string {
	root, p = path.Clean(root), path.Clean(p)
	switch {
	case p == root:
		return ""
	case root == ".":
		return p
	case root == "/":
		return strings.TrimPrefix(p, "/")
	}
	return strings.TrimPrefix(p, root+"/")
}
