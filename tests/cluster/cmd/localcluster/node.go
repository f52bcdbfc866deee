package main

// A real node for the local control plane: containerd with runc, a kubelet, a
// kube-scheduler, the controllers pods need, a bridge pod network and the
// "kubernetes" Service mapped to the API server. Everything it changes on the
// machine is written down in nodeState before it is made, so nodeDown undoes
// exactly that, also after a failed or interrupted nodeUp.
//
// One node per machine: the kubelet and containerd own machine-wide things
// (cgroups under kubepods, iptables chains, /var/log/containers, /run/containerd/s),
// so a second node would share and then break them. Root is required for the same
// reasons.
//
// No traffic leaves the machine: the node's IP is an address on lo, pods sit on a
// bridge with no uplink and no masquerade, the pod and Service ranges have
// "unreachable" routes, so a packet to an address nothing answers on this machine
// fails here instead of following the default route out, and nothing a pod sends
// is forwarded (the machine may have ip_forward on): pods reach only addresses of
// this machine (the node IP, the API server through the Service DNAT).

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nodeName = "teamaccess-node"
	// An address on lo that is not loopback: the kubelet refuses 127.0.0.0/8,
	// and pods reach services on the host (the Graph emulator) at it.
	nodeIP = "10.245.0.1"
	// The pod network: a bridge with this /24, inside an unreachable /16.
	podSubnet   = "10.244.0.0/24"
	podRange    = "10.244.0.0/16"
	podBridge   = "tacni0"
	serviceIP   = "10.0.0.1"               // the kubernetes Service (first IP of cluster-up's range)
	serviceCIDR = "10.0.0.0/24"            // cluster-up's --service-cluster-ip-range
	natChain    = "TEAMACCESS-NODE"        // nat: the kubernetes Service
	egressChain = "TEAMACCESS-NODE-EGRESS" // filter: nothing from a pod is forwarded off the machine
	// pauseImage is the sandbox image containerd uses, built here (cmd/pause).
	pauseImage = "localhost/teamaccess-pause:1"
	cniBinDir  = "/usr/lib/cni" // Debian's containernetworking-plugins
	// nodeControllers are added to baseControllers while a node runs.
	nodeControllers = "deployment,replicaset,root-ca-cert-publisher,nodelifecycle,endpointslice,podgc"
)

// shimSocketDir is where containerd's runc shims listen, whatever its root.
const shimSocketDir = "/run/containerd/s"

// nodeStateDir is machine-wide: it is how a second node-up finds the first.
var nodeStateDir = "/run/teamaccess-node"

func nodeStatePath() string { return filepath.Join(nodeStateDir, "node.json") }

// nodeState records what nodeUp made, as it makes it.
type nodeState struct {
	ClusterDir string            `json:"clusterDir"`
	NodeDir    string            `json:"nodeDir"`
	BinDir     string            `json:"binDir"`
	Pids       map[string]int    `json:"pids"`
	Binaries   map[string]string `json:"binaries"`
	// Machine-wide changes, each undone by nodeDown.
	AddressAdded      bool     `json:"addressAdded"`
	RoutesAdded       []string `json:"routesAdded"`
	BridgeAdded       bool     `json:"bridgeAdded"`
	ChainAdded        bool     `json:"chainAdded"`
	ChainsBefore      []string `json:"chainsBefore"` // every iptables chain before the kubelet made its own
	CreatedDirs       []string `json:"createdDirs"`  // machine paths that did not exist before
	NetnsBefore       []string `json:"netnsBefore"`
	ShimSocketsBefore []string `json:"shimSocketsBefore"` // /run/containerd/s, when another containerd owns it
	ControllersAdded  bool     `json:"controllersAdded"`
}

func (s *nodeState) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(nodeStatePath(), b, 0o644)
}

func loadNodeState() (*nodeState, error) {
	b, err := os.ReadFile(nodeStatePath())
	if err != nil {
		return nil, err
	}
	var s nodeState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("reading %s: %w", nodeStatePath(), err)
	}
	return &s, nil
}

func requireRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root: the kubelet and containerd mount volumes, create cgroups, "+
			"network namespaces, a bridge, routes and iptables rules (run it as root, e.g. with sudo)", what)
	}
	return nil
}

func nodeUpCmd(args []string) error {
	fs := flag.NewFlagSet("node-up", flag.ExitOnError)
	binDir := fs.String("bin", "", "directory holding kubelet and kube-scheduler")
	root := fs.String("root", defaultRoot(), "directory under which clusters keep their state")
	_ = fs.Parse(args)
	if err := requireRoot("a node"); err != nil {
		return err
	}
	clusterDir, err := selectCluster(*root)
	if err != nil {
		return err
	}
	if clusterDir == "" {
		return errors.New("no local cluster runs: start one with make cluster-up, then add the node")
	}
	if existing, err := loadNodeState(); err == nil {
		if existing.running() {
			return fmt.Errorf("a node already runs on this machine (cluster %s); there is one node per machine, "+
				"because the kubelet and containerd own machine-wide cgroups, iptables chains and directories. "+
				"Stop it first with make node-down", existing.ClusterDir)
		}
		fmt.Fprintf(os.Stderr, "removing what a stopped node left behind (cluster %s)\n", existing.ClusterDir)
		if err := existing.down(); err != nil {
			return err
		}
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "iptables", "ip6tables", "ip", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (tests/cluster/cluster.sh node-up installs the node's packages)", tool)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			return fmt.Errorf("the CNI plugin %s is missing in %s (apt-get install containernetworking-plugins)", plugin, cniBinDir)
		}
	}
	if err := os.MkdirAll(nodeStateDir, 0o755); err != nil {
		return err
	}
	began := time.Now()
	st := &nodeState{ClusterDir: clusterDir, NodeDir: filepath.Join(clusterDir, "node"), BinDir: *binDir,
		Pids: map[string]int{}, Binaries: map[string]string{}}
	if err := st.save(); err != nil {
		return err
	}
	if err := st.up(); err != nil {
		fmt.Fprintf(os.Stderr, "node-up failed, undoing what it did: %v\n", err)
		if derr := st.down(); derr != nil {
			fmt.Fprintf(os.Stderr, "node-down after the failure: %v\n", derr)
		}
		return err
	}
	fmt.Fprintf(os.Stderr, "node %s ready in %.1fs (state: %s)\n", nodeName, time.Since(began).Seconds(), st.NodeDir)
	fmt.Printf("KUBECONFIG=%s\n", filepath.Join(clusterDir, "admin.kubeconfig"))
	return nil
}

func nodeDownCmd(args []string) error {
	fs := flag.NewFlagSet("node-down", flag.ExitOnError)
	_ = fs.Parse(args)
	st, err := loadNodeState()
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "no node runs on this machine")
		return nil
	}
	if err != nil {
		return err
	}
	if err := requireRoot("removing the node"); err != nil {
		return err
	}
	began := time.Now()
	if err := st.down(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "node removed in %.1fs\n", time.Since(began).Seconds())
	return nil
}

// nodeLoadCmd imports an OCI or Docker image archive into the node's containerd.
func nodeLoadCmd(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: localcluster node-load ARCHIVE")
	}
	st, err := loadNodeState()
	if err != nil {
		return fmt.Errorf("no node runs on this machine (make node-up): %w", err)
	}
	return run("ctr", "--address", st.containerdSocket(), "-n", "k8s.io", "images", "import", args[0])
}

func (s *nodeState) running() bool {
	for name, pid := range s.Pids {
		if runsBinary(pid, s.Binaries[name]) {
			return true
		}
	}
	return false
}

func (s *nodeState) containerdSocket() string {
	return filepath.Join(s.NodeDir, "containerd", "containerd.sock")
}
func (s *nodeState) logPath(c string) string { return filepath.Join(s.NodeDir, c+".log") }

func (s *nodeState) up() error {
	cluster, err := readClusterState(s.ClusterDir)
	if err != nil {
		return err
	}
	if s.BinDir == "" {
		s.BinDir = cluster.BinDir
	}
	u, err := parseServer(cluster.Server)
	if err != nil {
		return err
	}
	p := pkiPaths(filepath.Join(s.ClusterDir, "pki"))
	for _, d := range []string{"containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "images"} {
		if err := os.MkdirAll(filepath.Join(s.NodeDir, d), 0o755); err != nil {
			return err
		}
	}
	if err := s.writeCredentials(p, cluster.Server); err != nil {
		return err
	}

	// Machine-wide directories the kubelet and containerd write outside their
	// own roots; the ones that did not exist before are removed by nodeDown.
	for _, d := range []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd", "/var/run/netns", "/etc/cni"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			s.CreatedDirs = append(s.CreatedDirs, d)
		}
	}
	s.NetnsBefore, _ = listDir(netnsDir())
	s.ShimSocketsBefore, _ = listDir(shimSocketDir)
	if err := s.save(); err != nil {
		return err
	}

	if err := s.network(u.port); err != nil {
		return err
	}
	if err := s.startContainerd(); err != nil {
		return err
	}
	if err := s.loadPauseImage(); err != nil {
		return err
	}
	if err := s.restartControllerManager(baseControllers + "," + nodeControllers); err != nil {
		return err
	}
	s.ControllersAdded = true
	if err := s.save(); err != nil {
		return err
	}
	if err := s.spawn("kube-scheduler", filepath.Join(s.BinDir, "kube-scheduler"),
		"--kubeconfig="+filepath.Join(s.NodeDir, "scheduler.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
	); err != nil {
		return err
	}
	s.ChainsBefore = iptablesChains()
	if err := s.save(); err != nil {
		return err
	}
	if err := s.startKubelet(p); err != nil {
		return err
	}
	return s.waitNodeReady(p, cluster.Server, time.Now())
}

type hostPort struct{ host, port string }

func parseServer(server string) (hostPort, error) {
	rest := strings.TrimPrefix(server, "https://")
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return hostPort{}, fmt.Errorf("API server address %q: %w", server, err)
	}
	return hostPort{host, port}, nil
}

func (s *nodeState) writeCredentials(p *pki, server string) error {
	ca, err := loadCA(p)
	if err != nil {
		return err
	}
	type cred struct {
		name, cn string
		orgs     []string
		ips      []net.IP
		dns      []string
		usage    x509.ExtKeyUsage
	}
	for _, c := range []cred{
		{"kubelet-client", "system:node:" + nodeName, []string{"system:nodes"}, nil, nil, x509.ExtKeyUsageClientAuth},
		{"kubelet-serving", nodeName, nil, []net.IP{net.ParseIP(nodeIP)}, []string{nodeName}, x509.ExtKeyUsageServerAuth},
		{"scheduler", "system:kube-scheduler", nil, nil, nil, x509.ExtKeyUsageClientAuth},
	} {
		certPEM, keyPEM, err := ca.issue(c.cn, c.orgs, c.ips, c.dns, c.usage)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(s.NodeDir, c.name+".crt"), certPEM, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(s.NodeDir, c.name+".key"), keyPEM, 0o600); err != nil {
			return err
		}
	}
	if err := writeKubeconfig(filepath.Join(s.NodeDir, "kubelet.kubeconfig"), server, p,
		filepath.Join(s.NodeDir, "kubelet-client.crt"), filepath.Join(s.NodeDir, "kubelet-client.key"), "system:node:"+nodeName); err != nil {
		return err
	}
	return writeKubeconfig(filepath.Join(s.NodeDir, "scheduler.kubeconfig"), server, p,
		filepath.Join(s.NodeDir, "scheduler.crt"), filepath.Join(s.NodeDir, "scheduler.key"), "system:kube-scheduler")
}

// network sets up the node's addresses, the pod bridge, the unreachable routes
// and the DNAT of the kubernetes Service to the API server on loopback.
func (s *nodeState) network(apiserverPort string) error {
	if err := run("ip", "addr", "add", nodeIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	s.AddressAdded = true
	if err := s.save(); err != nil {
		return err
	}
	// Anything in these ranges that nothing on this machine answers must fail
	// here: without these routes it would follow the default route out.
	for _, r := range []string{podRange, serviceCIDR} {
		if err := run("ip", "route", "add", "unreachable", r); err != nil {
			return err
		}
		s.RoutesAdded = append(s.RoutesAdded, r)
		if err := s.save(); err != nil {
			return err
		}
	}
	// The bridge plugin adopts an existing bridge; making it here lets
	// route_localnet be set before the first pod, and nodeDown delete it.
	if err := run("ip", "link", "add", podBridge, "type", "bridge"); err != nil {
		return err
	}
	s.BridgeAdded = true
	if err := s.save(); err != nil {
		return err
	}
	if err := run("ip", "link", "set", podBridge, "up"); err != nil {
		return err
	}
	// Pods reach the API server at the kubernetes Service IP, DNATed to its
	// loopback address: route_localnet lets packets from the bridge be routed to
	// 127.0.0.1 and the answers back (kube-proxy would do this on a real node).
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+podBridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return err
	}
	if err := run("iptables", "-t", "nat", "-N", natChain); err != nil {
		return err
	}
	s.ChainAdded = true
	if err := s.save(); err != nil {
		return err
	}
	if err := run("iptables", "-t", "nat", "-A", natChain, "-i", podBridge, "-d", serviceIP+"/32", "-p", "tcp", "--dport", "443",
		"-j", "DNAT", "--to-destination", "127.0.0.1:"+apiserverPort); err != nil {
		return err
	}
	if err := run("iptables", "-t", "nat", "-I", "PREROUTING", "-j", natChain); err != nil {
		return err
	}
	if err := run("iptables", "-t", "filter", "-N", egressChain); err != nil {
		return err
	}
	if err := run("iptables", "-t", "filter", "-A", egressChain, "-i", podBridge, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"); err != nil {
		return err
	}
	if err := run("iptables", "-t", "filter", "-I", "FORWARD", "-j", egressChain); err != nil {
		return err
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "teamaccess",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, podBridge, podSubnet, filepath.Join(s.NodeDir, "cni", "ipam"))
	return os.WriteFile(filepath.Join(s.NodeDir, "cni", "net.d", "10-teamaccess.conflist"), []byte(cni), 0o644)
}

func (s *nodeState) startContainerd() error {
	dir := filepath.Join(s.NodeDir, "containerd")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = "%[3]s.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # Root here may lack CAP_SYS_RESOURCE; without this runc fails to set the
  # sandbox's oom_score_adj ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    # native copies layers instead of mounting overlays: no mounts to undo, and
    # our images are a few megabytes.
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), s.containerdSocket(), filepath.Join(dir, "opt"),
		pauseImage, cniBinDir, filepath.Join(s.NodeDir, "cni", "net.d"))
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return err
	}
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return err
	}
	if err := s.spawn("containerd", bin, "--config", configPath); err != nil {
		return err
	}
	return s.waitFor("containerd", 30*time.Second, func() bool {
		return exec.Command("ctr", "--address", s.containerdSocket(), "version").Run() == nil
	})
}

// loadPauseImage builds the sandbox image (cmd/pause, static) and imports it.
func (s *nodeState) loadPauseImage() error {
	imageDir := filepath.Join(s.NodeDir, "images")
	rootfs := filepath.Join(imageDir, "pause-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	pause := filepath.Join(s.BinDir, "pause")
	if err := copyFile(pause, filepath.Join(rootfs, "pause"), 0o755); err != nil {
		return fmt.Errorf("the pause binary (cluster.sh bin builds it): %w", err)
	}
	archive := filepath.Join(imageDir, "pause.tar")
	if err := run(filepath.Join(s.BinDir, "ociarchive"), "-rootfs", rootfs, "-name", pauseImage, "-entrypoint", "/pause", "-out", archive); err != nil {
		return err
	}
	return run("ctr", "--address", s.containerdSocket(), "-n", "k8s.io", "images", "import", archive)
}

func (s *nodeState) restartControllerManager(controllers string) error {
	cluster, err := readClusterState(s.ClusterDir)
	if err != nil {
		return err
	}
	kcm := "kube-controller-manager"
	stopProcesses(&clusterState{BinDir: cluster.BinDir, Pids: map[string]int{kcm: cluster.Pids[kcm]}})
	l := &launch{dir: s.ClusterDir, binDir: cluster.BinDir, kubeconfig: cluster.Kubeconfig, server: cluster.Server,
		pids: cluster.Pids, exited: make(chan exitReport, 1)}
	if err := l.spawn(kcm, kcmArgs(s.ClusterDir, controllers)...); err != nil {
		return err
	}
	return l.writeState(cluster.Kubeconfig)
}

func (s *nodeState) startKubelet(p *pki) error {
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: %[2]s
tlsPrivateKeyFile: %[3]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[4]s}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://%[5]s
cgroupDriver: cgroupfs
# This machine has cgroup v1; the kubelet refuses it unless told otherwise.
failCgroupV1: false
failSwapOn: false
podLogsDir: %[6]s
clusterDomain: cluster.local
# A test machine's disk may be fuller than a real node's thresholds allow.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, nodeIP, filepath.Join(s.NodeDir, "kubelet-serving.crt"), filepath.Join(s.NodeDir, "kubelet-serving.key"),
		p.caCert, s.containerdSocket(), filepath.Join(s.NodeDir, "pod-logs"))
	configPath := filepath.Join(s.NodeDir, "kubelet.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return err
	}
	return s.spawn("kubelet", filepath.Join(s.BinDir, "kubelet"),
		"--config="+configPath,
		"--kubeconfig="+filepath.Join(s.NodeDir, "kubelet.kubeconfig"),
		"--root-dir="+filepath.Join(s.NodeDir, "kubelet"),
		"--hostname-override="+nodeName,
		"--node-ip="+nodeIP,
	)
}

// waitNodeReady waits for a Ready condition this kubelet reported (a Node left by
// an earlier one carries an old heartbeat).
func (s *nodeState) waitNodeReady(p *pki, server string, started time.Time) error {
	admin, err := adminClient(p)
	if err != nil {
		return err
	}
	return s.waitFor("kubelet", 120*time.Second, func() bool {
		resp, err := admin.Get(server + "/api/v1/nodes/" + nodeName)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var node struct {
			Status struct {
				Conditions []struct {
					Type, Status      string
					LastHeartbeatTime time.Time `json:"lastHeartbeatTime"`
				} `json:"conditions"`
			} `json:"status"`
		}
		if json.NewDecoder(resp.Body).Decode(&node) != nil {
			return false
		}
		for _, c := range node.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" && !c.LastHeartbeatTime.Before(started.Add(-time.Second).Truncate(time.Second)) {
				return true
			}
		}
		return false
	})
}

func (s *nodeState) spawn(component, binary string, args ...string) error {
	cmd, err := startDetached(component, binary, s.NodeDir, s.logPath(component), args...)
	if err != nil {
		return err
	}
	s.Pids[component] = cmd.Process.Pid
	s.Binaries[component] = binary
	go func() { _ = cmd.Wait() }()
	return s.save()
}

func (s *nodeState) waitFor(component string, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ready() {
			return nil
		}
		for name, pid := range s.Pids {
			if !runsBinary(pid, s.Binaries[name]) {
				return fmt.Errorf("%s exited; last lines of %s:\n%s", name, s.logPath(name), tail(s.logPath(name), 30))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s; last lines of %s:\n%s", component, timeout, s.logPath(component), tail(s.logPath(component), 30))
}

// down undoes what up recorded, in reverse, carrying on past failures so that
// one stuck step does not leave the rest behind; it reports them all.
func (s *nodeState) down() error {
	var problems []string
	note := func(err error) {
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	// The kubelet first, so that it does not restart what is stopped next.
	s.stop("kubelet")
	// The Node object goes with it; the pod garbage collector (still running)
	// then deletes the pods that were bound to it.
	note(s.deleteNodeObject())
	s.stop("kube-scheduler")
	// Every container and sandbox: their processes live in the kubepods cgroups.
	killCgroupProcesses("kubepods")
	// The shims outlive containerd; they carry its socket path in their arguments.
	killProcessesMentioning(s.containerdSocket())
	s.stop("containerd")
	note(unmountUnder(s.NodeDir))
	// containerd 1.6 puts its shims' sockets here whatever its state directory;
	// a killed shim leaves its socket behind.
	for _, socket := range newEntries(shimSocketDir, s.ShimSocketsBefore) {
		note(os.Remove(socket))
	}
	for _, ns := range newEntries(netnsDir(), s.NetnsBefore) {
		note(unmountUnder(ns))
		_ = os.Remove(ns)
	}
	note(removeCgroups("kubepods"))
	if s.ControllersAdded {
		note(s.restartControllerManager(baseControllers))
		s.ControllersAdded = false
	}
	// Network, in reverse. Each step is skipped when its object is gone already,
	// so a second node-down after a partial one finishes the job.
	if s.ChainAdded {
		for _, c := range []struct{ table, chain, from string }{{"nat", natChain, "PREROUTING"}, {"filter", egressChain, "FORWARD"}} {
			if exec.Command("iptables", "-t", c.table, "-S", c.chain).Run() != nil {
				continue
			}
			_ = exec.Command("iptables", "-t", c.table, "-D", c.from, "-j", c.chain).Run()
			note(run("iptables", "-t", c.table, "-F", c.chain))
			note(run("iptables", "-t", c.table, "-X", c.chain))
		}
	}
	if s.ChainsBefore != nil {
		note(removeNewChains(s.ChainsBefore))
	}
	if _, err := os.Stat("/sys/class/net/" + podBridge); s.BridgeAdded && err == nil {
		note(run("ip", "link", "del", podBridge))
	}
	for _, r := range s.RoutesAdded {
		if out, _ := exec.Command("ip", "route", "show", "type", "unreachable", r).Output(); len(strings.TrimSpace(string(out))) > 0 {
			note(run("ip", "route", "del", "unreachable", r))
		}
	}
	if out, _ := exec.Command("ip", "-o", "addr", "show", "dev", "lo").Output(); s.AddressAdded && strings.Contains(string(out), " "+nodeIP+"/32") {
		note(run("ip", "addr", "del", nodeIP+"/32", "dev", "lo"))
	}
	// Files: the machine-wide directories the node created, and its own.
	for _, d := range s.CreatedDirs {
		note(os.RemoveAll(d))
	}
	note(removeLogLinks("/var/log/containers", filepath.Join(s.NodeDir, "pod-logs")))
	note(os.RemoveAll(s.NodeDir))
	if len(problems) > 0 {
		_ = s.save()
		return fmt.Errorf("node-down left something behind (run it again):\n  %s", strings.Join(problems, "\n  "))
	}
	if err := os.Remove(nodeStatePath()); err != nil {
		return err
	}
	return os.Remove(nodeStateDir)
}

func (s *nodeState) deleteNodeObject() error {
	cluster, err := readClusterState(s.ClusterDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the cluster is gone already
	}
	if err != nil {
		return err
	}
	admin, err := adminClient(pkiPaths(filepath.Join(s.ClusterDir, "pki")))
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodDelete, cluster.Server+"/api/v1/nodes/"+nodeName, nil)
	if err != nil {
		return err
	}
	resp, err := admin.Do(req)
	if err != nil {
		return nil // the API server is not running: nothing to delete from
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("deleting the Node %s: HTTP %d", nodeName, resp.StatusCode)
	}
	return nil
}

func (s *nodeState) stop(component string) {
	pid, ok := s.Pids[component]
	if !ok {
		return
	}
	stopPid(component, pid, s.Binaries[component])
	delete(s.Pids, component)
}

// mount is one line of /proc/self/mountinfo: where, and which file system type.
type mount struct{ point, fsType string }

func mounts() []mount {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var all []mount
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mount-point options [optional...] - type source ...
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		all = append(all, mount{point: unescapeMount(fields[4]), fsType: fields[sep+1]})
	}
	return all
}

// cgroupRoots are the mounted cgroup hierarchies (v1: one per controller set;
// v2: the single unified one).
func cgroupRoots() []string {
	var roots []string
	for _, m := range mounts() {
		if m.fsType == "cgroup" || m.fsType == "cgroup2" {
			roots = append(roots, m.point)
		}
	}
	return roots
}

// cgroupTree lists the cgroup called name and everything below it, in every
// hierarchy, deepest first.
func cgroupTree(name string) []string {
	var dirs []string
	for _, root := range cgroupRoots() {
		_ = filepath.WalkDir(filepath.Join(root, name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	return dirs
}

func killCgroupProcesses(name string) {
	for _, dir := range cgroupTree(name) {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
}

// removeCgroups removes the named cgroup tree in every hierarchy, deepest first;
// a cgroup is removed with rmdir once its processes are gone.
func removeCgroups(name string) error {
	var problems []string
	for _, d := range cgroupTree(name) {
		var err error
		for attempt := 0; attempt < 20; attempt++ {
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("cgroup %s: %v", d, err))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func killProcessesMentioning(needle string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), needle) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder unmounts every mount point at or below dir, deepest first.
func unmountUnder(dir string) error {
	var problems []string
	for attempt := 0; attempt < 5; attempt++ {
		points := mountPointsUnder(dir)
		if len(points) == 0 {
			return nil
		}
		for _, m := range points {
			if err := syscall.Unmount(m, 0); err != nil {
				if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && attempt == 4 {
					problems = append(problems, fmt.Sprintf("unmount %s: %v", m, err))
				}
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func mountPointsUnder(dir string) []string {
	var points []string
	for _, m := range mounts() {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			points = append(points, m.point)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	return points
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

var iptablesTables = []string{"filter", "nat", "mangle"}

// iptablesChains lists every chain as "<tool> <table> <chain>".
func iptablesChains() []string {
	var chains []string
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			out, err := exec.Command(tool, "-t", table, "-S").Output()
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && (f[0] == "-N" || f[0] == "-P") {
					chains = append(chains, tool+" "+table+" "+f[1])
				}
			}
		}
	}
	return chains
}

// removeNewChains deletes the chains the kubelet made (those not in before),
// with the rules elsewhere that jump to them.
func removeNewChains(before []string) error {
	had := map[string]bool{}
	for _, c := range before {
		had[c] = true
	}
	var problems []string
	for _, c := range iptablesChains() {
		if had[c] {
			continue
		}
		f := strings.Fields(c)
		tool, table, chain := f[0], f[1], f[2]
		out, _ := exec.Command(tool, "-t", table, "-S").Output()
		for _, rule := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(rule, "-A ") && strings.Contains(rule, "-j "+chain) {
				args := append([]string{"-t", table, "-D"}, strings.Fields(strings.TrimPrefix(rule, "-A "))...)
				_ = exec.Command(tool, args...).Run()
			}
		}
		if err := run(tool, "-t", table, "-F", chain); err != nil {
			problems = append(problems, err.Error())
		}
		if err := run(tool, "-t", table, "-X", chain); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// removeLogLinks removes the kubelet's symlinks in /var/log/containers that
// point into this node's pod logs (when the directory existed before the node).
func removeLogLinks(dir, podLogs string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(target, podLogs) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// netnsDir is where containerd pins pod network namespaces, with symlinks
// resolved: /var/run is usually /run, and mountinfo names the real path.
func netnsDir() string {
	if d, err := filepath.EvalSymlinks("/var/run/netns"); err == nil {
		return d
	}
	return "/run/netns"
}

func listDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// newEntries lists the paths in dir whose names are not in before.
func newEntries(dir string, before []string) []string {
	had := map[string]bool{}
	for _, n := range before {
		had[n] = true
	}
	now, _ := listDir(dir)
	var fresh []string
	for _, n := range now {
		if !had[n] {
			fresh = append(fresh, filepath.Join(dir, n))
		}
	}
	return fresh
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
