// kube-lab runs a whole Kubernetes control plane in one process for tests and
// the local mesh: embedded etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, each started through its upstream cmd/*/app package with the
// same flags the real binary takes. There is no kubelet: Nodes are plain
// objects a test creates, and Pod status is whatever the test patches in.
package main

import (
	"context"
	"encoding/json"
	goflag "flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	netutils "k8s.io/utils/net"
)

// defaultControllers: what a mesh test needs (workloads, endpoints, service
// accounts and their tokens, namespace and garbage collection) and nothing
// that expects a kubelet or cloud (no nodelifecycle: it would taint the
// hand-made Nodes NotReady because they never heartbeat).
const defaultControllers = "serviceaccount-token,serviceaccount,root-ca-cert-publisher," +
	"namespace,garbagecollector,deployment,replicaset,statefulset,daemonset,job," +
	"endpoint,endpointslice,endpointslicemirroring,podgc,clusterrole-aggregation,service-cidr-controller"

type config struct {
	dataDir, kubeconfigOut, bindAddress, advertiseAddress string
	port, etcdPort, etcdPeerPort                          int
	serviceCIDR, issuer, audiences, controllers           string
	adminAddr, adminSocket                                string
	watchCache, etcdNoFsync, runKCM, runScheduler, reap   bool
	apiserverArgs, kcmArgs, schedulerArgs                 []string
}

func main() {
	if err := run(); err != nil {
		klog.ErrorS(err, "kube-lab failed")
		klog.Flush()
		os.Exit(1)
	}
}

func parseFlags() *config {
	c := &config{}
	fs := pflag.CommandLine
	fs.StringVar(&c.dataDir, "data-dir", "", "folder for etcd data, certificates and keys (required; reused on restart)")
	fs.StringVar(&c.kubeconfigOut, "kubeconfig-out", "", "where to write the admin kubeconfig (default <data-dir>/kubeconfig); ca.crt is written beside it")
	fs.StringVar(&c.bindAddress, "bind-address", "127.0.0.1", "API server listen address")
	fs.IntVar(&c.port, "port", 0, "API server port; 0 = the port of the previous run with this data dir, else a free one")
	fs.StringVar(&c.advertiseAddress, "advertise-address", "", "address published in the default/kubernetes endpoints; empty with a loopback bind address = publish none")
	fs.IntVar(&c.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (0 = free port)")
	fs.IntVar(&c.etcdPeerPort, "etcd-peer-port", 0, "etcd peer port on 127.0.0.1 (0 = free port)")
	fs.BoolVar(&c.etcdNoFsync, "etcd-unsafe-no-fsync", true, "skip fsync in etcd (fast on busy CI; data survives clean stops, not machine crashes)")
	fs.StringVar(&c.serviceCIDR, "service-cluster-ip-range", "10.96.0.0/16", "ClusterIP range")
	fs.StringVar(&c.issuer, "service-account-issuer", "https://kubernetes.default.svc.cluster.local", "iss of service-account tokens")
	fs.StringVar(&c.audiences, "api-audiences", "https://kubernetes.default.svc.cluster.local,istio-ca", "audiences the API server accepts (comma list); the first is the default of TokenRequest")
	fs.StringVar(&c.controllers, "controllers", defaultControllers, "kube-controller-manager --controllers value ('*' = upstream defaults)")
	fs.BoolVar(&c.runKCM, "controller-manager", true, "run kube-controller-manager")
	fs.BoolVar(&c.runScheduler, "scheduler", true, "run kube-scheduler")
	fs.BoolVar(&c.reap, "reap-pods", true, "finish deleting Terminating pods bound to a node once their grace period is over (the kubelet's job)")
	fs.BoolVar(&c.watchCache, "watch-cache", true, "API server watch cache; false sends every watch to etcd, so /compact makes any resumed watch get 410 Gone")
	fs.StringVar(&c.adminAddr, "admin-addr", "", "loopback IP:port for the admin hook (port 0 = free; the address is printed as 'admin http://ADDR')")
	fs.StringVar(&c.adminSocket, "admin-socket", "", "unix socket path for the admin hook")
	fs.StringArrayVar(&c.apiserverArgs, "apiserver-arg", nil, "extra kube-apiserver flag, e.g. --apiserver-arg=--watch-cache-sizes=pods#0 (repeatable)")
	fs.StringArrayVar(&c.kcmArgs, "controller-manager-arg", nil, "extra kube-controller-manager flag (repeatable)")
	fs.StringArrayVar(&c.schedulerArgs, "scheduler-arg", nil, "extra kube-scheduler flag (repeatable)")
	klogFlags := goflag.NewFlagSet("klog", goflag.ExitOnError)
	klog.InitFlags(klogFlags) // --v=N etc.; logs go to stderr
	fs.AddGoFlagSet(klogFlags)
	pflag.Parse()
	verflag.PrintAndExitIfRequested() // --version (registered by component-base)
	if c.dataDir == "" {
		fmt.Fprintln(os.Stderr, "kube-lab: --data-dir is required")
		os.Exit(2)
	}
	if c.kubeconfigOut == "" {
		c.kubeconfigOut = filepath.Join(c.dataDir, "kubeconfig")
	}
	return c
}

func run() error {
	c := parseFlags()
	// The first SIGINT/SIGTERM starts a clean shutdown; stop() below restores
	// the default action, so a second one kills at once.
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return err
	}
	dataDir, _ := filepath.Abs(c.dataDir)

	// --- API server listener: opened now (no race for a "free" port) and on
	// the same port as last time, so an old kubeconfig still works.
	statePath := filepath.Join(dataDir, "state.json")
	var state struct{ APIServerPort int }
	if b, err := os.ReadFile(statePath); err == nil {
		_ = json.Unmarshal(b, &state)
	}
	port := c.port
	if port == 0 {
		port = state.APIServerPort
	}
	bindIP := netutils.ParseIPSloppy(c.bindAddress)
	if bindIP == nil {
		return fmt.Errorf("--bind-address %q is not an IP", c.bindAddress)
	}
	apiListener, err := net.Listen("tcp", net.JoinHostPort(c.bindAddress, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("API server port: %w", err)
	}
	state.APIServerPort = apiListener.Addr().(*net.TCPAddr).Port
	b, _ := json.Marshal(state)
	if err := writeFileAtomic(statePath, b, 0o600); err != nil {
		return err
	}
	clientHost := c.bindAddress
	if bindIP.IsUnspecified() {
		clientHost = "127.0.0.1"
	}
	server := "https://" + net.JoinHostPort(clientHost, strconv.Itoa(state.APIServerPort))

	// --- certificates, keys and kubeconfigs (made once, reused after).
	p, err := loadOrCreatePKI(filepath.Join(dataDir, "pki"))
	if err != nil {
		return err
	}
	_, serviceNet, err := netutils.ParseCIDRSloppy(c.serviceCIDR)
	if err != nil {
		return err
	}
	firstServiceIP, _ := netutils.GetIndexedIP(serviceNet, 1) // the default/kubernetes ClusterIP
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), firstServiceIP}
	for _, a := range []string{c.bindAddress, c.advertiseAddress} {
		if ip := netutils.ParseIPSloppy(a); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := p.servingCert("apiserver", ips, dns); err != nil {
		return err
	}
	if err := p.serviceAccountKeys(); err != nil {
		return err
	}
	// Each component gets the identity the bootstrap RBAC policy expects.
	users := []struct{ name, user, group string }{
		{"admin", "kube-lab-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
	}
	for _, u := range users {
		var groups []string
		if u.group != "" {
			groups = []string{u.group}
		}
		if err := p.clientCert(u.name, u.user, groups...); err != nil {
			return err
		}
		out := p.path(u.name + ".kubeconfig")
		if u.name == "admin" {
			out = c.kubeconfigOut
		}
		if err := writeKubeconfig(out, server, p, u.name); err != nil {
			return err
		}
	}
	caPEM, _ := os.ReadFile(p.path("ca.crt"))
	if err := writeFileAtomic(filepath.Join(filepath.Dir(c.kubeconfigOut), "ca.crt"), caPEM, 0o644); err != nil {
		return err
	}

	// --- etcd.
	etcdPort, etcdPeerPort := c.etcdPort, c.etcdPeerPort
	for _, pp := range []*int{&etcdPort, &etcdPeerPort} {
		if *pp == 0 {
			if *pp, err = freePort(); err != nil {
				return err
			}
		}
	}
	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"), etcdPort, etcdPeerPort, c.etcdNoFsync)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	closeEtcd := sync.OnceFunc(etcd.Close)
	defer closeEtcd()
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	if c.adminAddr != "" || c.adminSocket != "" {
		bound, err := serveAdmin(adminCtx, etcd, c.adminAddr, c.adminSocket)
		if err != nil {
			return fmt.Errorf("admin hook: %w", err)
		}
		if bound != "" {
			fmt.Printf("admin http://%s\n", bound)
		}
	}

	// --- parse every component's own flags, then settle the shared feature
	// gates and version registry once (each upstream command does this in
	// its PersistentPreRunE; here all three share the process-wide registry).
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + c.bindAddress,
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--service-account-issuer=" + c.issuer,
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--api-audiences=" + c.audiences,
		"--service-cluster-ip-range=" + c.serviceCIDR,
		"--authorization-mode=Node,RBAC",
		// This plugin taints every new Node not-ready until the node-lifecycle
		// controller sees kubelet heartbeats; hand-made Nodes never send any.
		"--disable-admission-plugins=TaintNodesByCondition",
		"--allow-privileged=true",
		"--profiling=false",
		"--watch-cache=" + strconv.FormatBool(c.watchCache),
	}
	switch {
	case c.advertiseAddress != "":
		apiArgs = append(apiArgs, "--advertise-address="+c.advertiseAddress)
	case bindIP.IsLoopback():
		// Endpoints may not hold loopback IPs, and the host's own address
		// (the upstream default) is not where we listen: publish nothing.
		apiArgs = append(apiArgs, "--advertise-address="+c.bindAddress, "--endpoint-reconciler-type=none")
	}
	apiOpts := apiserveroptions.NewServerRunOptions()
	if err := parseInto("kube-apiserver", apiOpts.Flags(), append(apiArgs, c.apiserverArgs...)); err != nil {
		return err
	}
	apiOpts.SecureServing.Listener = apiListener

	var kcmOpts *kcmoptions.KubeControllerManagerOptions
	if c.runKCM {
		if kcmOpts, err = kcmoptions.NewKubeControllerManagerOptions(); err != nil {
			return err
		}
		nfs := kcmOpts.Flags(kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases())
		kcmOpts.ParsedFlags = &nfs
		err := parseInto("kube-controller-manager", nfs, append([]string{
			"--kubeconfig=" + p.path("controller-manager.kubeconfig"),
			"--secure-port=0", // no metrics/healthz server: nothing scrapes it
			"--leader-elect=false",
			"--controllers=" + c.controllers,
			"--use-service-account-credentials=true", // one SA per controller, as kubeadm runs it
			"--service-account-private-key-file=" + p.path("sa.key"),
			"--root-ca-file=" + p.path("ca.crt"),
			"--cluster-signing-cert-file=" + p.path("ca.crt"),
			"--cluster-signing-key-file=" + p.path("ca.key"),
		}, c.kcmArgs...))
		if err != nil {
			return err
		}
	}
	var schedOpts *scheduleroptions.Options
	if c.runScheduler {
		schedOpts = scheduleroptions.NewOptions()
		err := parseInto("kube-scheduler", *schedOpts.Flags, append([]string{
			"--kubeconfig=" + p.path("scheduler.kubeconfig"),
			"--secure-port=0",
			"--leader-elect=false",
		}, c.schedulerArgs...))
		if err != nil {
			return err
		}
	}
	if err := compatibility.DefaultComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// Components talking to themselves should not log deprecation warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	// --- API server.
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	completed, err := apiOpts.Complete(apiCtx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) > 0 {
		return fmt.Errorf("kube-apiserver flags: %v", errs)
	}
	apiDone := make(chan error, 1)
	go func() { apiDone <- apiserver.Run(apiCtx, completed) }()

	adminCfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfigOut)
	if err != nil {
		return err
	}
	client := kubernetes.NewForConfigOrDie(adminCfg)
	if err := waitFor(sigCtx, apiDone, 120*time.Second, func(ctx context.Context) bool {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok"
	}); err != nil {
		return fmt.Errorf("API server /readyz: %w", err)
	}

	// --- controllers and scheduler, on a context cancelled before the API
	// server's so they stop while it still answers.
	ctrlCtx, stopCtrl := context.WithCancel(context.Background())
	defer stopCtrl()
	ctrlDone := make(chan error, 2)
	running := 0
	if kcmOpts != nil {
		cfg, err := kcmOpts.Config(ctrlCtx, kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases())
		if err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
		running++
		go func() { ctrlDone <- kcm.Run(ctrlCtx, cfg.Complete()) }()
	}
	if schedOpts != nil {
		cc, sched, err := scheduler.Setup(ctrlCtx, schedOpts)
		if err != nil {
			return fmt.Errorf("kube-scheduler: %w", err)
		}
		running++
		go func() { ctrlDone <- scheduler.Run(ctrlCtx, cc, sched) }()
	}
	if c.reap {
		reapPods(ctrlCtx, client)
	}
	// Pods are refused until their namespace's "default" ServiceAccount
	// exists; waiting for it spares every test that first-pod flake.
	if c.runKCM && (strings.Contains(c.controllers, "serviceaccount") || c.controllers == "*") {
		err := waitFor(sigCtx, apiDone, 60*time.Second, func(ctx context.Context) bool {
			_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			return err == nil
		})
		if err != nil {
			return fmt.Errorf("waiting for default/default ServiceAccount: %w", err)
		}
	}
	fmt.Printf("ready %s\n", c.kubeconfigOut)

	// --- run until a signal or a component dies, then stop in reverse order.
	var failure error
	select {
	case <-sigCtx.Done():
		klog.InfoS("kube-lab: shutting down")
	case err := <-apiDone:
		failure = fmt.Errorf("kube-apiserver exited: %v", err)
		apiDone <- err
	case err := <-ctrlDone:
		failure = fmt.Errorf("a controller component exited: %v", err)
		running--
	}
	stop()
	stopCtrl()
	waitN(ctrlDone, running, 20*time.Second)
	stopAPI()
	waitN(apiDone, 1, 30*time.Second)
	stopAdmin()
	closeEtcd()
	klog.Flush()
	return failure
}

// parseInto parses args with a component's own named flag sets, the way its
// cobra command would.
func parseInto(name string, nfs cliflag.NamedFlagSets, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s flags: %w", name, err)
	}
	return nil
}

// waitFor polls cond every 200ms until it holds, the API server dies, the
// process is signalled, or the timeout passes.
func waitFor(ctx context.Context, apiDone chan error, timeout time.Duration, cond func(context.Context) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok := cond(reqCtx)
		cancel()
		if ok {
			return nil
		}
		select {
		case err := <-apiDone:
			apiDone <- err
			return fmt.Errorf("kube-apiserver exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
	}
}

func waitN(ch chan error, n int, timeout time.Duration) {
	deadline := time.After(timeout)
	for ; n > 0; n-- {
		select {
		case <-ch:
		case <-deadline:
			klog.InfoS("kube-lab: component did not stop in time", "timeout", timeout)
			return
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeKubeconfig writes a self-contained kubeconfig (certs inline) for the
// client pair pki/<name>.crt|key.
func writeKubeconfig(path, server string, p *pki, name string) error {
	ca, err := os.ReadFile(p.path("ca.crt"))
	if err != nil {
		return err
	}
	crt, _ := os.ReadFile(p.path(name + ".crt"))
	key, _ := os.ReadFile(p.path(name + ".key"))
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kube-lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["kube-lab"] = &clientcmdapi.Context{Cluster: "kube-lab", AuthInfo: name}
	cfg.CurrentContext = "kube-lab"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}
