// pause: the process that holds a pod's namespaces open (what registry.k8s.io/pause does).
// It is PID 1 of the pod sandbox: it reaps children re-parented to it and exits 0 on SIGINT or
// SIGTERM. Built static (CGO_ENABLED=0) so the image needs no libraries.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child without blocking, so none stays a zombie.
func reap() {
	for {
		pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
