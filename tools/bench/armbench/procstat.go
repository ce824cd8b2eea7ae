package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// status is what armbench reads from /proc/PID/status (or from
// /proc/PID/task/TID/status, where the memory lines are the process's).
type status struct {
	memory
	// Switches counts the times the task stopped running (voluntary plus
	// nonvoluntary context switches): a task that sleeps and wakes up
	// switches once per wake-up.
	Switches int64
}

// memory is a process's resident memory, in bytes.
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
	st, err := parseStatus(b)
	if err != nil {
		return memory{}, fmt.Errorf("read memory of %d: %w", pid, err)
	}
	return st.memory, nil
}

// readSwitches sums the context switches of every thread of process pid
// that is alive now (a thread that has ended takes its count with it).
func readSwitches(pid int) (int64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("read context switches of %d: %w", pid, err)
	}
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "status"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		st, err := parseStatus(b)
		if err != nil {
			return 0, fmt.Errorf("read context switches of %d: %w", pid, err)
		}
		n += st.Switches
	}
	return n, nil
}

// parseStatus reads the lines VmRSS, RssAnon, RssFile and VmHWM ("Key:
// N kB") and voluntary_ctxt_switches and nonvoluntary_ctxt_switches ("Key:
// N") of /proc/PID/status. VmRSS must be there; the others are 0 when
// missing.
func parseStatus(b []byte) (status, error) {
	var st status
	kb := map[string]*int64{"VmRSS": &st.RSS, "RssAnon": &st.Anon, "RssFile": &st.File, "VmHWM": &st.Peak}
	var vol, nonvol int64
	counts := map[string]*int64{"voluntary_ctxt_switches": &vol, "nonvoluntary_ctxt_switches": &nonvol}
	seen := false
	for l := range bytes.Lines(b) {
		key, val, ok := strings.Cut(string(l), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		if p := kb[key]; p != nil {
			num, unit, _ := strings.Cut(val, " ")
			if strings.TrimSpace(unit) != "kB" {
				return status{}, fmt.Errorf("parse status: %s: want \"N kB\", got %q", key, val)
			}
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 || n > 1<<40 {
				return status{}, fmt.Errorf("parse status: %s: bad number %q", key, num)
			}
			*p = n << 10
			seen = seen || key == "VmRSS"
		} else if p := counts[key]; p != nil {
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 0 || n > 1<<50 {
				return status{}, fmt.Errorf("parse status: %s: bad number %q", key, val)
			}
			*p = n
		}
	}
	if !seen {
		return status{}, errors.New("parse status: no VmRSS (a zombie or a kernel thread?)")
	}
	st.Switches = vol + nonvol
	return st, nil
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
