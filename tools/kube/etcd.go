package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
)

// startEtcd runs a one-member etcd in this process, on loopback only.
// Ports may change from one start to the next: a member that restarts from its
// WAL keeps its identity and ignores the initial-cluster settings, and only
// this process ever dials it.
func startEtcd(dir string, clientPort, peerPort int, noFsync bool) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kube-lab"
	cfg.Dir = dir
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{"stderr"}
	// fsync on every write makes a loaded 2-core CI machine slow to answer;
	// a lab cluster can lose its last writes on a machine crash, not on a
	// clean stop (the page cache still reaches disk).
	cfg.UnsafeNoFsync = noFsync
	// Left at zero (only etcd's own flag parsing sets the default) every
	// request would be logged as slow.
	cfg.WarningUnaryRequestDuration = time.Second
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd not ready after 60s")
	}
	return e, client.String(), nil
}

// serveAdmin answers test hooks on loopback TCP and/or a unix socket:
//
//	POST /compact   compact etcd up to its current revision -> {"revision":N}
//	GET  /healthz   ok
//
// Compaction makes a watch that resumes from an older resourceVersion get
// 410 Gone, as long as the watch reaches etcd (see --watch-cache in README).
func serveAdmin(ctx context.Context, e *embed.Etcd, addr, socket string) (string, error) {
	cli := v3client.New(e.Server)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("POST /compact", func(w http.ResponseWriter, r *http.Request) {
		// Any read returns the store's current revision in its header.
		resp, err := cli.Get(r.Context(), "compact-probe", clientv3.WithCountOnly())
		if err == nil {
			_, err = cli.Compact(r.Context(), resp.Header.Revision, clientv3.WithCompactPhysical())
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{"revision": resp.Header.Revision})
	})
	srv := &http.Server{Handler: mux}
	go func() { <-ctx.Done(); srv.Close(); cli.Close() }()

	bound := ""
	if addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", err
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return "", fmt.Errorf("--admin-addr %q: must be a loopback IP:port", addr)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return "", err
		}
		bound = l.Addr().String()
		go srv.Serve(l)
	}
	if socket != "" {
		os.Remove(socket) // left over by a killed run
		l, err := net.Listen("unix", socket)
		if err != nil {
			return "", err
		}
		go srv.Serve(l)
	}
	return bound, nil
}
