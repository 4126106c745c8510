package localcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// ServiceProxy stands in for kube-proxy, which this cluster has not got
// (its binary is not built, and nothing here programs a node's iptables
// for Services): it listens on an address of the node and forwards each
// TCP connection to a ready endpoint of one Service, as kube-proxy's old
// userspace mode did. It reads the endpoints from the Service's
// EndpointSlices, which kube-controller-manager fills from the pods'
// readiness, so a pod that fails its readiness probe, or is terminating,
// gets no new connection.
type ServiceProxy struct {
	ln     net.Listener
	port   string
	lister func() ([]*discoveryv1.EndpointSlice, error)
	stop   context.CancelFunc

	mu    sync.Mutex
	next  int
	conns map[net.Conn]struct{}
	dials map[string]int // connections forwarded, by endpoint address
	wg    sync.WaitGroup
}

// ServeService forwards connections to addr (host:port, in the node's
// namespace) to the endpoints of Service ns/name on its port named port,
// until Close.
func (c *Cluster) ServeService(ns, name, port, addr string) (*ServiceProxy, error) {
	ctx, stop := context.WithCancel(context.Background())
	f := informers.NewSharedInformerFactoryWithOptions(c.Clientset, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=" + name }))
	slices := f.Discovery().V1().EndpointSlices()
	inf := slices.Informer()
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		stop()
		return nil, fmt.Errorf("the EndpointSlices of %s/%s did not sync", ns, name)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		stop()
		f.Shutdown()
		return nil, fmt.Errorf("the proxy for %s/%s on %s: %w", ns, name, addr, err)
	}
	p := &ServiceProxy{ln: ln, port: port, stop: func() { stop(); f.Shutdown() }, conns: map[net.Conn]struct{}{}, dials: map[string]int{},
		lister: func() ([]*discoveryv1.EndpointSlice, error) {
			return slices.Lister().EndpointSlices(ns).List(labels.Everything())
		}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Endpoints are the addresses (host:port) of the ready endpoints now.
func (p *ServiceProxy) Endpoints() []string {
	list, err := p.lister()
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range list {
		var port int32
		for _, sp := range s.Ports {
			if sp.Name != nil && *sp.Name == p.port && sp.Port != nil {
				port = *sp.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			// An absent condition counts as ready, as for kube-proxy.
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				out = append(out, net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	return out
}

// Forwarded returns how many connections went to each endpoint address.
func (p *ServiceProxy) Forwarded() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, v := range p.dials {
		out[k] = v
	}
	return out
}

func (p *ServiceProxy) serve() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(in)
		}()
	}
}

// forward connects in to the next ready endpoint, round robin, trying the
// others if it refuses; with none, the client's connection is closed.
func (p *ServiceProxy) forward(in net.Conn) {
	if !p.track(in) {
		return
	}
	defer p.untrack(in)
	eps := p.Endpoints()
	p.mu.Lock()
	start := p.next
	p.next++
	p.mu.Unlock()
	var out net.Conn
	for i := range eps {
		ep := eps[(start+i)%len(eps)]
		c, err := net.DialTimeout("tcp", ep, 2*time.Second)
		if err == nil {
			out = c
			p.mu.Lock()
			p.dials[ep]++
			p.mu.Unlock()
			break
		}
	}
	if out == nil || !p.track(out) {
		if out != nil {
			out.Close()
		}
		return
	}
	defer p.untrack(out)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Half-close, so that each side sees the other's end of stream.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}

// track records a connection for close; false once the proxy is closed.
func (p *ServiceProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *ServiceProxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// Close stops accepting, cuts every connection and waits for the
// forwarders to end.
func (p *ServiceProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
	p.stop()
}

// String names the proxy's address, for messages.
func (p *ServiceProxy) String() string {
	return fmt.Sprintf("proxy on %s", p.ln.Addr())
}
