//go:build linux

// Command hwe2e manages the hubwarden e2e bed by hand.
//
//	hwe2e cleanup   remove what killed runs left behind (namespaces hwe2e-<pid>-…
//	                of dead pids, their processes and /etc/netns dirs, the bed's users)
//	hwe2e up        build a bed, print how to reach it, wait for Ctrl-C, remove it
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hubwarden/hubwarden/e2e/netns"
)

func main() {
	if err := run(os.Args[1:]); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "hwe2e:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	if len(args) != 1 {
		return errors.New("usage: hwe2e cleanup|up")
	}
	switch args[0] {
	case "cleanup":
		return netns.Cleanup(logf)
	case "up":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		b, err := netns.New(ctx, netns.Options{WorkDir: "netns/work", Logf: logf})
		if err != nil {
			return err
		}
		defer b.Close()
		for _, u := range []string{b.BareUser, b.WardenUser} {
			if _, err := b.StartServer(ctx, u, netns.SpawnTimeout); err != nil {
				return err
			}
		}
		fmt.Printf("bed up (logs in %s). From the client netns:\n  ip netns exec %s curl %s/hub/login\n"+
			"users %s (bare pod %s) and %s (warden pod %s), password %s\nCtrl-C removes it.\n",
			b.Dir, b.Client.Name, b.BaseURL, b.BareUser, b.Bare.Name, b.WardenUser, b.Warden.Name, netns.Password)
		<-ctx.Done()
		return nil
	}
	return fmt.Errorf("unknown command %q (usage: hwe2e cleanup|up)", args[0])
}
