package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// memory is a process's resident memory from /proc/PID/status, in bytes.
type memory struct {
	RSS  int64 // VmRSS
	Anon int64 // RssAnon: heap, stacks, other private memory
	File int64 // RssFile: mapped files (the binary, bbolt's mmap)
	Peak int64 // VmHWM: the RSS high-water mark
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

// parseStatus reads the "Key:   N kB" lines VmRSS, RssAnon, RssFile and
// VmHWM of /proc/PID/status. VmRSS must be there; the others are 0 when
// missing.
func parseStatus(b []byte) (memory, error) {
	var m memory
	dst := map[string]*int64{"VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File, "VmHWM": &m.Peak}
	seen := false
	for l := range bytes.Lines(b) {
		key, val, ok := strings.Cut(string(l), ":")
		p := dst[key]
		if !ok || p == nil {
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(val), " ")
		if strings.TrimSpace(unit) != "kB" {
			return memory{}, fmt.Errorf("parse status: %s: want \"N kB\", got %q", key, strings.TrimSpace(val))
		}
		kb, err := strconv.ParseInt(num, 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return memory{}, fmt.Errorf("parse status: %s: bad number %q", key, num)
		}
		*p = kb << 10
		seen = seen || key == "VmRSS"
	}
	if !seen {
		return memory{}, errors.New("parse status: no VmRSS (a zombie or a kernel thread?)")
	}
	return m, nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, which
// is 100 on every Linux architecture.
const userHZ = 100

// readCPU returns the CPU time, user plus system, that process pid has
// used.
func readCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	d, err := parseStat(b)
	if err != nil {
		return 0, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	return d, nil
}

// parseStat returns utime+stime (fields 14 and 15) of /proc/PID/stat. The
// second field, the command name in parentheses, may hold spaces and
// parentheses itself, so the fields are counted from its last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("parse stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("parse stat: %d fields after the command name, want at least %d", len(f), stime+1)
	}
	var ticks int64
	for _, s := range []string{f[utime], f[stime]} {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || v > 1<<50 {
			return 0, fmt.Errorf("parse stat: bad time %q", s)
		}
		ticks += v
	}
	return time.Duration(ticks) * (time.Second / userHZ), nil
}
