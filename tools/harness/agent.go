package harness

import (
	"regexp"
	"slices"
	"strconv"
	"time"
)

// AgentConfig says how to start an edge-agent. Name is required; the zero
// value of every other field works.
type AgentConfig struct {
	// Name is the device's --name. Required.
	Name string
	// Labels are its --labels ("k=v,..."); empty passes none.
	Labels string
	// Fleet is the --fleet address; default the fleet's own (set it to a
	// link simulator's in front of the fleet).
	Fleet string
	// Token is the join string; default a fresh one-use token. A device
	// whose DataDir holds an identity needs none: see Agent.Restart.
	Token string
	// DataDir is its --data-dir; default a new tb.TempDir().
	DataDir string
	// Kubeconfig is its --kubeconfig ("off" for none); empty passes none.
	Kubeconfig string
	// LogLevel is its --log-level; default debug.
	LogLevel string
	// Args are more flags after "start".
	Args []string
	// Env is added to its environment.
	Env []string
	// Launch is the program and arguments that run the agent, before
	// "start" (such as cross/qemu-exec.sh TARGET BINARY); default the
	// fleet's edge-agent.
	Launch []string
	// LogDir, when set, also gets the output (see Cmd.LogDir).
	LogDir string
	// NoWait returns once the process started, without waiting for the
	// fleet to list the device as online.
	NoWait bool
	// UpTimeout bounds the wait for the tunnel; default 2m.
	UpTimeout time.Duration
}

// Agent is a running edge-agent.
type Agent struct {
	f   *Fleet
	cfg AgentConfig
	// Name and DataDir are the device's.
	Name, DataDir string
	// Proc is the current agent process.
	Proc *Proc
	// starts counts processes started, to name their logs.
	starts int
}

// TunnelUpRE matches the agent's log line for a tunnel that is up.
var TunnelUpRE = regexp.MustCompile(`msg="tunnel up"`)

// StartAgent joins a new device called name with labels ("k=v,...") and
// waits until the fleet lists it as online.
func (f *Fleet) StartAgent(name, labels string) *Agent {
	f.tb.Helper()
	return f.StartAgentWith(AgentConfig{Name: name, Labels: labels})
}

// StartAgentWith starts an agent as cfg says and, unless cfg.NoWait,
// waits until its tunnel is up and the fleet lists it as online.
func (f *Fleet) StartAgentWith(cfg AgentConfig) *Agent {
	f.tb.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = f.tb.TempDir()
	}
	if cfg.Fleet == "" {
		cfg.Fleet = f.Addr
	}
	if cfg.Token == "" {
		cfg.Token = f.Token()
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.UpTimeout <= 0 {
		cfg.UpTimeout = 2 * time.Minute
	}
	a := &Agent{f: f, cfg: cfg, Name: cfg.Name, DataDir: cfg.DataDir}
	a.start("--token", cfg.Token)
	return a
}

func (a *Agent) start(extra ...string) {
	a.f.tb.Helper()
	cfg := a.cfg
	launch := cfg.Launch
	if len(launch) == 0 {
		launch = []string{a.f.Bin.Path("edge-agent")}
	}
	args := slices.Concat(launch[1:], []string{"start", "--fleet", cfg.Fleet, "--data-dir", cfg.DataDir, "--name", cfg.Name, "--log-level", cfg.LogLevel})
	if cfg.Labels != "" {
		args = append(args, "--labels", cfg.Labels)
	}
	if cfg.Kubeconfig != "" {
		args = append(args, "--kubeconfig", cfg.Kubeconfig)
	}
	args = append(append(args, extra...), cfg.Args...)
	name := "edge-agent " + cfg.Name
	if a.starts > 0 {
		name += " #" + strconv.Itoa(a.starts+1)
	}
	a.starts++
	a.Proc = Start(a.f.tb, Cmd{Name: name, Path: launch[0], Args: args, Env: cfg.Env, LogDir: cfg.LogDir})
	if cfg.NoWait {
		return
	}
	a.Proc.WaitLine(TunnelUpRE, cfg.UpTimeout)
	a.f.WaitOnline(cfg.Name)
}

// Stop stops the agent.
func (a *Agent) Stop() { a.Proc.Stop() }

// Restart stops the agent and starts it again on its data directory (it
// has joined: no token), and waits as StartAgentWith does.
func (a *Agent) Restart() {
	a.f.tb.Helper()
	a.Proc.Stop()
	a.start()
}
