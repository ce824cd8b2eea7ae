package harness

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

// Stat is what Linux's /proc says about a process.
type Stat struct {
	// RSS is VmRSS; Anon is RssAnon (heap, stacks, other private
	// memory); File is RssFile (mapped files: the binary, bbolt's mmap);
	// Peak is VmHWM (the RSS high-water mark). All in bytes.
	RSS, Anon, File, Peak int64
	// Threads is the number of threads.
	Threads int
	// Switches counts the times the main thread stopped running
	// (voluntary plus nonvoluntary context switches); ReadSwitches sums
	// every thread's.
	Switches int64
	// CPU is the user plus system time the process used; ChildCPU that of
	// the children it has waited for (how sshd's per-connection processes
	// are counted once they have ended).
	CPU, ChildCPU time.Duration
	// Nice is the process's niceness (its main thread's), -20 to 19.
	Nice int
}

// ReadStat reads /proc/PID/status and /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Stat{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	st, err := parseStatus(b)
	if err != nil {
		return Stat{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	if b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
		return Stat{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	if st.CPU, st.ChildCPU, st.Nice, err = parseStat(b); err != nil {
		return Stat{}, fmt.Errorf("read process %d: %w", pid, err)
	}
	return st, nil
}

// Stat reads the process's /proc entries.
func (p *Proc) Stat() (Stat, error) { return ReadStat(p.PID()) }

// ReadSwitches sums the context switches of every thread of process pid
// that is alive now (a thread that has ended takes its count with it): a
// thread that sleeps and wakes up switches once per wake-up.
func ReadSwitches(pid int) (int64, error) {
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

// parseStatus reads /proc/PID/status: the memory lines ("VmRSS:  N kB"),
// Threads and the context switch counts ("Key:  N"). VmRSS must be there;
// the others are 0 when missing.
func parseStatus(b []byte) (Stat, error) {
	var st Stat
	kb := map[string]*int64{"VmRSS": &st.RSS, "RssAnon": &st.Anon, "RssFile": &st.File, "VmHWM": &st.Peak}
	var vol, nonvol, threads int64
	counts := map[string]*int64{"voluntary_ctxt_switches": &vol, "nonvoluntary_ctxt_switches": &nonvol, "Threads": &threads}
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
				return Stat{}, fmt.Errorf("parse status: %s: want \"N kB\", got %q", key, val)
			}
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 || n > 1<<40 {
				return Stat{}, fmt.Errorf("parse status: %s: bad number %q", key, num)
			}
			*p = n << 10
			seen = seen || key == "VmRSS"
		} else if p := counts[key]; p != nil {
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 0 || n > 1<<50 {
				return Stat{}, fmt.Errorf("parse status: %s: bad number %q", key, val)
			}
			*p = n
		}
	}
	if !seen {
		return Stat{}, errors.New("parse status: no VmRSS (a zombie or a kernel thread?)")
	}
	st.Switches, st.Threads = vol+nonvol, int(threads)
	return st, nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, which
// is 100 on every Linux architecture.
const userHZ = 100

// parseStat returns utime+stime (fields 14 and 15) and cutime+cstime (16
// and 17) of /proc/PID/stat. The second field, the command name in
// parentheses, may hold spaces and parentheses itself, so the fields are
// counted from its last ')'.
func parseStat(b []byte) (cpu, children time.Duration, nice int, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, errors.New("parse stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	const utime, niceField = 14 - 3, 19 - 3
	if len(f) <= niceField {
		return 0, 0, 0, fmt.Errorf("parse stat: %d fields after the command name, want at least %d", len(f), niceField+1)
	}
	var ticks [4]int64
	for j, s := range f[utime : utime+4] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || v > 1<<50 {
			return 0, 0, 0, fmt.Errorf("parse stat: bad time %q", s)
		}
		ticks[j] = v
	}
	if nice, err = strconv.Atoi(f[niceField]); err != nil || nice < -20 || nice > 19 {
		return 0, 0, 0, fmt.Errorf("parse stat: bad niceness %q", f[niceField])
	}
	tick := time.Second / userHZ
	return time.Duration(ticks[0]+ticks[1]) * tick, time.Duration(ticks[2]+ticks[3]) * tick, nice, nil
}

// MB formats bytes in megabytes (10^6).
func MB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// Children returns the ids of the processes whose parent is pid.
func Children(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("children of %d: %w", pid, err)
	}
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // it ended meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		// After the name: state, then the parent's id.
		if f := strings.Fields(string(b[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out, nil
}
