package harness

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Stat
		wantErr bool
	}{
		{"process", "Name:\tfleetd\nVmHWM:\t   20000 kB\nVmRSS:\t   12000 kB\nRssAnon:\t    8000 kB\nRssFile:\t    4000 kB\nThreads:\t7\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n",
			Stat{RSS: 12000 << 10, Anon: 8000 << 10, File: 4000 << 10, Peak: 20000 << 10, Threads: 7, Switches: 12}, false},
		{"no switch counts", "VmRSS:\t 1 kB\n", Stat{RSS: 1 << 10}, false},
		{"kernel thread", "Name:\tkthreadd\nState:\tS (sleeping)\n", Stat{}, true},
		{"bad unit", "VmRSS:\t   12 MB\n", Stat{}, true},
		{"bad number", "VmRSS:\t   x kB\n", Stat{}, true},
		{"bad count", "VmRSS:\t 1 kB\nvoluntary_ctxt_switches:\t-1\n", Stat{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStatus = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	// Fields 14-17 (utime stime cutime cstime) are 100 20 300 40 ticks;
	// field 19 (nice) is 10.
	line := "1234 (edge (agent)) S 1 1234 1234 0 -1 4194560 100 0 0 0 100 20 300 40 30 10 9 0 1000 1000000 2000 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
	tests := []struct {
		name          string
		in            string
		cpu, children time.Duration
		nice          int
		wantErr       bool
	}{
		{"process", line, 1200 * time.Millisecond, 3400 * time.Millisecond, 10, false},
		{"negative niceness", strings.Replace(line, " 30 10 9 ", " 0 -20 9 ", 1), 1200 * time.Millisecond, 3400 * time.Millisecond, -20, false},
		{"truncated", "1234 (x) S 1 2 3", 0, 0, 0, true},
		{"no niceness", "1234 (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 100 20 300 40 30", 0, 0, 0, true},
		{"no name", "1234 x S", 0, 0, 0, true},
		{"bad number", strings.Replace(line, " 100 20 ", " 100 zz ", 1), 0, 0, 0, true},
		{"bad niceness", strings.Replace(line, " 30 10 9 ", " 30 99 9 ", 1), 0, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cpu, children, nice, err := parseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr || cpu != tt.cpu || children != tt.children || nice != tt.nice {
				t.Errorf("parseStat = %v, %v, %d, %v; want %v, %v, %d, error %v", cpu, children, nice, err, tt.cpu, tt.children, tt.nice, tt.wantErr)
			}
		})
	}
}

func TestReadOwnStat(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil || st.RSS <= 0 || st.Peak < st.RSS || st.Threads < 1 {
		t.Errorf("ReadStat(self) = %+v, %v; want a positive RSS at most the peak, and threads", st, err)
	}
	if n, err := ReadSwitches(os.Getpid()); err != nil || n <= 0 {
		t.Errorf("ReadSwitches(self) = %d, %v; want a positive count", n, err)
	}
}

// FuzzParseStatus: the /proc status parser rejects bad input with an
// error, never a panic.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("VmRSS:\t 12 kB\nVmHWM:\t 20 kB\nThreads:\t3\n"))
	f.Add([]byte("VmRSS:"))
	f.Add([]byte("VmHWM:\t 13264 kB\nVmRSS:\t 13000 kB\nRssAnon:\t 2740 kB\nRssFile:\t 10260 kB\n"))
	f.Add([]byte("VmRSS:\t1 kB\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3"))
	f.Add([]byte("VmRSS: kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatus(b)
		if err == nil && (st.RSS < 0 || st.Switches < 0) {
			t.Errorf("parseStatus(%q) = %+v: negative", b, st)
		}
	})
}

// FuzzParseStat: the /proc stat parser rejects bad input with an error,
// never a panic.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 1 2 3 4 20 0"))
	f.Add([]byte(")"))
	f.Add([]byte("42 (edge-agent) S 1 2 3 4 5 6 7 8 9 10 7 5 11 12 20 0 1 0 100 200 300\n"))
	f.Add([]byte("42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 7 5\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cpu, children, nice, err := parseStat(b)
		if err == nil && (cpu < 0 || children < 0 || nice < -20 || nice > 19) {
			t.Errorf("parseStat(%q) = %v, %v: negative", b, cpu, children)
		}
	})
}
