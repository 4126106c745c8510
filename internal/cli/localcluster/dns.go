package localcluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is the node's resolver, in place of the cluster DNS that a real
// cluster runs: the kubelet gives every pod a resolv.conf naming it, and
// it answers A queries for its zone and every name under it with NodeIP,
// where Coffer's host-network server listens. Every other name is
// NXDOMAIN: the namespace has no route out, and nothing should try.
type dnsServer struct {
	zone string
	conn *net.UDPConn
	done chan struct{}
}

// startDNS serves on NodeIP:53 (UDP; the answers are far below 512 bytes,
// so no client falls back to TCP).
func startDNS(zone string) (*dnsServer, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(NodeIP), Port: 53})
	if err != nil {
		return nil, err
	}
	s := &dnsServer{zone: strings.ToLower(strings.TrimSuffix(zone, ".")), conn: conn, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *dnsServer) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if out, ok := answer(s.zone, buf[:n]); ok {
			s.conn.WriteToUDP(out, from)
		}
	}
}

func (s *dnsServer) Close() {
	s.conn.Close()
	<-s.done
}

// answer builds the reply to one query; ok is false for what is not a
// query at all (which gets no reply).
func answer(zone string, query []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	ours := name == zone || strings.HasSuffix(name, "."+zone)
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: ours, RecursionDesired: h.RecursionDesired}
	if !ours {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil, false
	}
	// An AAAA (or any other type) of one of ours gets an empty answer:
	// the name exists, with an IPv4 address only.
	if ours && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		var ip [4]byte
		copy(ip[:], net.ParseIP(NodeIP).To4())
		if b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: ip}) != nil {
			return nil, false
		}
	}
	out, err := b.Finish()
	return out, err == nil
}

// resolver makes this process resolve names the way the node's pods do:
// through the node's resolver only (and /etc/hosts, for localhost).
func resolver() *net.Resolver {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "udp", net.JoinHostPort(NodeIP, "53"))
	}}
}
