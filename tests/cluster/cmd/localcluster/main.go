// Command localcluster starts and stops a real Kubernetes control plane on
// loopback: etcd, kube-apiserver and kube-controller-manager, each the upstream
// binary built by this module, each its own process.
//
//	localcluster up   -bin DIR [-root DIR]   start one; prints KUBECONFIG=<path> last
//	localcluster down [-root DIR]            stop the one KUBECONFIG names, else the last started
//	localcluster node-up -bin DIR            add a node to it (root; one per machine, see node.go)
//	localcluster node-down                   remove the node and everything it changed
//	localcluster node-load ARCHIVE           import an image archive into the node's containerd
//
// Every cluster has its own state directory and ports, so several can run at once.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Components in start order; they are stopped in reverse.
var components = []string{"etcd", "kube-apiserver", "kube-controller-manager"}

// stateFile marks a directory as one of ours and records how to stop it.
const stateFile = "cluster.json"

type clusterState struct {
	BinDir     string         `json:"binDir"`
	Kubeconfig string         `json:"kubeconfig"`
	Server     string         `json:"server"`
	Pids       map[string]int `json:"pids"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "node-up":
		err = nodeUpCmd(os.Args[2:])
	case "node-down":
		err = nodeDownCmd(os.Args[2:])
	case "node-load":
		err = nodeLoadCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: localcluster up -bin DIR [-root DIR] | down [-root DIR] | node-up -bin DIR | node-down | node-load ARCHIVE")
	os.Exit(2)
}

func defaultRoot() string {
	if r := os.Getenv("TEAMACCESS_CLUSTER_ROOT"); r != "" {
		return r
	}
	return filepath.Join(os.TempDir(), "teamaccess-clusters")
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	binDir := fs.String("bin", "", "directory holding etcd, kube-apiserver and kube-controller-manager")
	root := fs.String("root", defaultRoot(), "directory under which each cluster gets its state directory")
	_ = fs.Parse(args)
	if *binDir == "" {
		return errors.New("-bin is required")
	}
	for _, c := range components {
		if _, err := os.Stat(filepath.Join(*binDir, binaryName(c))); err != nil {
			return fmt.Errorf("binary for %s missing in %s (run tests/cluster/cluster.sh build): %w", c, *binDir, err)
		}
	}
	if err := os.MkdirAll(*root, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(*root, time.Now().Format("20060102-150405-"))
	if err != nil {
		return err
	}
	l := &launch{dir: dir, binDir: *binDir, pids: map[string]int{}, exited: make(chan exitReport, len(components))}
	if err := l.start(); err != nil {
		l.stopAll()
		fmt.Fprintf(os.Stderr, "state kept for inspection in %s (make cluster-down removes it)\n", dir)
		_ = l.writeState("")
		_ = os.WriteFile(filepath.Join(*root, "last"), []byte(dir), 0o644)
		return err
	}
	if err := os.WriteFile(filepath.Join(*root, "last"), []byte(dir), 0o644); err != nil {
		return err
	}
	fmt.Printf("KUBECONFIG=%s\n", l.kubeconfig)
	return nil
}

type exitReport struct {
	component string
	err       error
}

type launch struct {
	dir, binDir, kubeconfig, server string
	pids                            map[string]int
	exited                          chan exitReport
}

func (l *launch) start() error {
	began := time.Now()
	p, err := writePKI(filepath.Join(l.dir, "pki"))
	if err != nil {
		return fmt.Errorf("writing certificates: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	etcdPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	l.server = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	l.kubeconfig = filepath.Join(l.dir, "admin.kubeconfig")
	kcmKubeconfig := filepath.Join(l.dir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(l.kubeconfig, l.server, p, p.adminCert, p.adminKey, "admin"); err != nil {
		return err
	}
	if err := writeKubeconfig(kcmKubeconfig, l.server, p, p.kcmCert, p.kcmKey, "system:kube-controller-manager"); err != nil {
		return err
	}

	if err := l.spawn("etcd",
		"--name=default",
		"--data-dir="+filepath.Join(l.dir, "etcd-data"),
		"--listen-client-urls="+etcdClient, "--advertise-client-urls="+etcdClient,
		"--listen-peer-urls="+etcdPeer, "--initial-advertise-peer-urls="+etcdPeer,
		"--initial-cluster=default="+etcdPeer,
		"--unsafe-no-fsync=true", // a throwaway test store: durability is not needed, speed is
		"--log-level=warn",
	); err != nil {
		return err
	}
	if err := l.waitFor("etcd", 30*time.Second, func() bool { return httpOK(nil, etcdClient+"/health") }); err != nil {
		return err
	}

	if err := l.spawn("kube-apiserver",
		"--etcd-servers="+etcdClient,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[2]),
		"--tls-cert-file="+p.servingCert, "--tls-private-key-file="+p.servingKey,
		"--client-ca-file="+p.caCert,
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.saPublicKey,
		"--service-account-signing-key-file="+p.saSigningKey,
		"--allow-privileged=true",
		// For kubectl logs and exec once a node joins (cluster.sh node-up).
		"--kubelet-client-certificate="+p.kubeletClientCert, "--kubelet-client-key="+p.kubeletClientKey,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		// The "kubernetes" Service would point at 127.0.0.1, which Endpoints reject.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	); err != nil {
		return err
	}
	admin, err := adminClient(p)
	if err != nil {
		return err
	}
	if err := l.waitFor("kube-apiserver", 120*time.Second, func() bool { return httpOK(admin, l.server+"/readyz") }); err != nil {
		return err
	}

	if err := l.spawn("kube-controller-manager", kcmArgs(l.dir, baseControllers)...); err != nil {
		return err
	}
	// The default ServiceAccount exists once the controllers run, and pods need it.
	if err := l.waitFor("kube-controller-manager", 90*time.Second, func() bool {
		return httpOK(admin, l.server+"/api/v1/namespaces/default/serviceaccounts/default")
	}); err != nil {
		return err
	}
	if err := l.writeState(l.kubeconfig); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "control plane ready at %s in %.1fs (state: %s)\n", l.server, time.Since(began).Seconds(), l.dir)
	return nil
}

// baseControllers are the controllers a cluster without a node needs:
// clusterrole-aggregation fills the built-in admin, edit and view ClusterRoles;
// resourcequota computes a ResourceQuota's status, without which the quota
// admission plugin refuses every pod in its namespace (namespace profiles).
const baseControllers = "namespace,garbagecollector,serviceaccount,serviceaccount-token,clusterrole-aggregation,resourcequota"

// kcmArgs are the controller-manager's flags; node-up restarts it with the
// controllers that pods need added (nodeControllers).
func kcmArgs(dir, controllers string) []string {
	p := pkiPaths(filepath.Join(dir, "pki"))
	return []string{
		"--kubeconfig=" + filepath.Join(dir, "controller-manager.kubeconfig"),
		"--controllers=" + controllers,
		"--leader-elect=false",
		// The namespace controller sends some forty requests per namespace it
		// deletes; at the default 20 per second a test or benchmark deleting a
		// thousand namespaces would wait half an hour for it.
		"--kube-api-qps=400",
		"--kube-api-burst=800",
		"--concurrent-namespace-syncs=20",
		"--secure-port=0", // no serving endpoint: avoids delegated authn/authz setup
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.saSigningKey,
		"--root-ca-file=" + p.caCert,
	}
}

func binaryName(component string) string { return component }

// startDetached starts binary in dir with its output in logPath, in a session of
// its own: it outlives this launcher and ignores the terminal's Ctrl-C.
func startDetached(component, binary, dir, logPath string, args ...string) (*exec.Cmd, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", component, err)
	}
	return cmd, nil
}

func (l *launch) spawn(component string, args ...string) error {
	cmd, err := startDetached(component, filepath.Join(l.binDir, binaryName(component)), l.dir, l.logPath(component), args...)
	if err != nil {
		return err
	}
	l.pids[component] = cmd.Process.Pid
	if err := l.writeState(""); err != nil {
		return err
	}
	go func() { l.exited <- exitReport{component, cmd.Wait()} }()
	return nil
}

// waitFor polls ready until it holds, failing early when any component exits.
func (l *launch) waitFor(component string, timeout time.Duration, ready func() bool) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case r := <-l.exited:
			return fmt.Errorf("%s exited during startup (%v); last lines of %s:\n%s",
				r.component, r.err, l.logPath(r.component), tail(l.logPath(r.component), 30))
		case <-deadline:
			return fmt.Errorf("%s not ready after %s; last lines of %s:\n%s",
				component, timeout, l.logPath(component), tail(l.logPath(component), 30))
		case <-tick.C:
		}
	}
}

func (l *launch) logPath(component string) string { return filepath.Join(l.dir, component+".log") }

func (l *launch) writeState(kubeconfig string) error {
	b, err := json.MarshalIndent(clusterState{BinDir: l.binDir, Kubeconfig: kubeconfig, Server: l.server, Pids: l.pids}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.dir, stateFile), b, 0o644)
}

// readClusterState reads the state file of the cluster in dir.
func readClusterState(dir string) (*clusterState, error) {
	path := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st clusterState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &st, nil
}

func (l *launch) stopAll() {
	stopProcesses(&clusterState{BinDir: l.binDir, Pids: l.pids})
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	root := fs.String("root", defaultRoot(), "directory under which clusters keep their state")
	_ = fs.Parse(args)

	dir, err := selectCluster(*root)
	if err != nil {
		return err
	}
	if dir == "" {
		fmt.Fprintln(os.Stderr, "no local cluster to stop")
		return nil
	}
	// A node joined to this cluster goes first: it lives in the cluster's directory.
	if node, err := loadNodeState(); err == nil && node.ClusterDir == dir {
		if err := requireRoot("removing the cluster's node"); err != nil {
			return err
		}
		if err := node.down(); err != nil {
			return err
		}
	}
	st, err := readClusterState(dir)
	switch {
	case err == nil:
		stopProcesses(st)
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	last := filepath.Join(*root, "last")
	if b, err := os.ReadFile(last); err == nil && strings.TrimSpace(string(b)) == dir {
		_ = os.Remove(last)
	}
	fmt.Fprintf(os.Stderr, "stopped and removed %s\n", dir)
	return nil
}

// selectCluster finds the state directory: the one KUBECONFIG names, else the last started.
func selectCluster(root string) (string, error) {
	if kc := os.Getenv("KUBECONFIG"); kc != "" {
		dir := filepath.Dir(kc)
		if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
			return "", fmt.Errorf("KUBECONFIG=%s is not a cluster started by localcluster (no %s beside it); unset KUBECONFIG to stop the last one started", kc, stateFile)
		}
		return dir, nil
	}
	b, err := os.ReadFile(filepath.Join(root, "last"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	dir := strings.TrimSpace(string(b))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(filepath.Join(root, "last"))
		return "", nil
	}
	return dir, nil
}

// stopProcesses sends SIGTERM in reverse start order and SIGKILL to what is left
// after a grace period.
func stopProcesses(st *clusterState) {
	for i := len(components) - 1; i >= 0; i-- {
		c := components[i]
		if pid, ok := st.Pids[c]; ok {
			stopPid(c, pid, filepath.Join(st.BinDir, binaryName(c)))
		}
	}
}

// stopPid stops one process. A pid is only signalled while it still runs the
// binary it was started from, so a recycled pid is never hit.
func stopPid(name string, pid int, binary string) {
	if !runsBinary(pid, binary) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && runsBinary(pid, binary) {
		time.Sleep(100 * time.Millisecond)
	}
	if runsBinary(pid, binary) {
		fmt.Fprintf(os.Stderr, "%s (pid %d) ignored SIGTERM, sending SIGKILL\n", name, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func runsBinary(pid int, binary string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil && strings.Contains(string(stat), ") Z ") {
		return false // a zombie has exited already
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return argv0 == binary
}

// freePorts picks n free ports below the kernel's ephemeral range. A port from
// that range (what listening on :0 gives) can be handed to any outgoing
// connection the moment its server stops, or even to a client dialling it
// (TCP self-connect); a test that restarts the API server then finds its port
// taken ("address already in use"). Below the range only an explicit bind can
// take a port.
func freePorts(n int) ([]int, error) {
	const floor = 10000
	low := ephemeralLow()
	if low < floor+1000 {
		low = 0 // an unusual range: any port may be ephemeral, take what :0 gives
	}
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("finding a free port in [%d, %d): none after %d tries", floor, low, tries)
		}
		port := 0
		if low > 0 {
			port = floor + rand.IntN(low-floor)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken: try another
		}
		listeners = append(listeners, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ephemeralLow is the first port the kernel hands out to outgoing connections
// (32768 unless configured otherwise).
func ephemeralLow() int {
	const fallback = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return fallback
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return fallback
	}
	return low
}

func adminClient(p *pki) (*http.Client, error) {
	ca, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(p.adminCert, p.adminKey)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

func httpOK(c *http.Client, url string) bool {
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1024*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return "    " + strings.Join(lines, "\n    ")
}
