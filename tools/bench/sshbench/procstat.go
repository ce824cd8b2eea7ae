package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// memory is a process's resident set from /proc/PID/status.
type memory struct {
	RSS  int64 // VmRSS, bytes
	Anon int64 // RssAnon: heap, stacks and other private memory, bytes
	File int64 // RssFile: mapped files (the binary, bbolt's mmap), bytes
	Peak int64 // VmHWM (the RSS high-water mark), bytes
}

// readMemory reads the memory of process pid.
func readMemory(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, fmt.Errorf("read memory of %d: %w", pid, err)
	}
	m, err := parseStatus(b)
	if err != nil {
		return memory{}, fmt.Errorf("read memory of %d: %w", pid, err)
	}
	return m, nil
}

// parseStatus reads VmRSS, RssAnon, RssFile and VmHWM ("VmRSS:\t   9876
// kB") from the contents of /proc/PID/status.
func parseStatus(b []byte) (memory, error) {
	var m memory
	var haveRSS bool
	fields := map[string]*int64{"VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File, "VmHWM": &m.Peak}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		dst := fields[key]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return memory{}, fmt.Errorf("parse %s: %q is not \"N kB\"", key, strings.TrimSpace(val))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return memory{}, fmt.Errorf("parse %s: bad number %q", key, f[0])
		}
		*dst = kb * 1024
		haveRSS = haveRSS || key == "VmRSS"
	}
	if !haveRSS {
		return memory{}, fmt.Errorf("parse status: no VmRSS line (a kernel thread or a zombie?)")
	}
	return m, nil
}

// clockTick is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture we run on).
const clockTick = 10 * time.Millisecond

// readCPU returns the CPU time (user+system) of process pid; with
// children, it adds that of the children it has waited for (which is how
// sshd's per-connection processes and the agent's sftp-server processes
// are counted once they have ended).
func readCPU(pid int, children bool) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	t, err := parseStat(b, children)
	if err != nil {
		return 0, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	return t, nil
}

// parseStat sums utime and stime (and cutime and cstime with children)
// from the contents of /proc/PID/stat, whose second field, the command
// name in parentheses, may itself hold spaces and parentheses.
func parseStat(b []byte, children bool) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse stat: no command name")
	}
	// Fields after the name start at field 3 (state); utime is field 14.
	f := strings.Fields(string(b[i+1:]))
	const utime = 14 - 3
	if len(f) < utime+4 {
		return 0, fmt.Errorf("parse stat: %d fields after the name, want at least %d", len(f), utime+4)
	}
	n := 2
	if children {
		n = 4
	}
	var ticks int64
	for _, s := range f[utime : utime+n] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || v > 1<<50 {
			return 0, fmt.Errorf("parse stat: bad time %q", s)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}
