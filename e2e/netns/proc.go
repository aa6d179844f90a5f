//go:build linux

package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a process the bed started; it runs in its own process group.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // path of the combined stdout/stderr
	done chan struct{}
	err  error
}

// start runs argv (in ns when ns is not empty, through `ip netns exec`, which
// also bind-mounts /etc/netns/<ns>/resolv.conf) with its output in logPath.
func start(name, ns string, argv, env []string, dir, logPath string) (*Proc, error) {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: if the test binary dies, the direct child dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Exited reports whether the process has ended, and its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// errExit0 stands for the nil Wait error of a process that exited with status 0.
var errExit0 = errors.New("exit status 0")

// exitErr is err, the error Exited or Wait returned for an ended process, or
// errExit0 when it is nil, so that messages can wrap why the process ended.
func exitErr(err error) error {
	if err == nil {
		return errExit0
	}
	return err
}

// Wait waits up to d for the process to end.
func (p *Proc) Wait(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	err := syscall.Kill(-p.Cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs the group.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping %s: %w", p.Name, err)
	}
	if done, _ := p.Wait(grace); done {
		return nil
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing %s: %w", p.Name, err)
	}
	if done, _ := p.Wait(5 * time.Second); !done {
		return fmt.Errorf("killing %s: pid %d still running", p.Name, p.Cmd.Process.Pid)
	}
	return nil
}
