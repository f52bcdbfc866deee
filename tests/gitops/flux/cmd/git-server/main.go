// Command git-server serves the Git repositories under a directory over HTTP on
// loopback, with Flux's own test server (github.com/fluxcd/pkg/gittestserver),
// for source-controller to fetch from. It prints its URL, then serves until
// its standard input closes (the test that started it ended).
//
//	git-server -root DIR
//
// A repository DIR/NAME.git is served as URL/NAME.git; pushes are accepted too.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/fluxcd/pkg/gittestserver"
)

func main() {
	root := flag.String("root", "", "the directory holding the bare repositories")
	flag.Parse()
	if *root == "" {
		fmt.Fprintln(os.Stderr, "git-server: -root is required")
		os.Exit(2)
	}
	server := gittestserver.NewGitServer(*root).AutoCreate()
	if err := server.StartHTTP(); err != nil {
		fmt.Fprintln(os.Stderr, "git-server:", err)
		os.Exit(1)
	}
	defer server.StopHTTP()
	fmt.Println(server.HTTPAddress())
	_, _ = io.Copy(io.Discard, os.Stdin)
}
