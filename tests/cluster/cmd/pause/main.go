// Command pause is the node's sandbox ("pause") container: it holds a pod's
// namespaces open, reaps the zombies a shared PID namespace leaves to it, and
// exits on SIGTERM or SIGINT. It is built static (CGO_ENABLED=0) and packed into
// a one-layer image by ociarchive, so the node never pulls registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
