package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// IMDSAddress is where the Azure SDKs look for the instance metadata
// service; they hard-code it, so the agent must own it.
const IMDSAddress = "169.254.169.254"

// Redirect is how traffic for 169.254.169.254:80 reaches the agent.
type Redirect string

// The redirect modes.
//
//   - LinkLocal adds 169.254.169.254/32 to a node interface and the agent
//     listens on it directly. No packet is rewritten, so the source address
//     the agent sees is the caller's; it needs CAP_NET_ADMIN once.
//   - IPTables keeps the agent on its own address and installs a DNAT rule
//     (nat table, chain COFFER-IMDS, jumped to from PREROUTING for pods and
//     OUTPUT for host processes), reconciled every ten seconds in case
//     another component flushes it, and kept when the agent exits. Traffic
//     the agent itself sends carries the mark AgentMark and is never
//     redirected. The target must not be a loopback address: the kernel
//     drops pods' packets redirected there.
//   - None: something else (a CNI, a host rule) delivers the traffic.
const (
	RedirectNone      Redirect = "none"
	RedirectLinkLocal Redirect = "link-local"
	RedirectIPTables  Redirect = "iptables"
)

// AgentMark is the socket mark of the agent's own connections.
const AgentMark = 0x1c0ffe

const chain = "COFFER-IMDS"

// LinkLocal adds 169.254.169.254/32 to the interface named dev (created
// as a dummy interface if it does not exist, "lo" is used as it is) and
// returns a function that removes it again.
func LinkLocal(dev string) (func() error, error) {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("finding interface %s: %w", dev, err)
		}
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: dev}}
		if err := netlink.LinkAdd(d); err != nil {
			return nil, fmt.Errorf("creating dummy interface %s for %s (use --link-local-interface=lo where dummy interfaces are unavailable): %w", dev, IMDSAddress, err)
		}
		if link, err = netlink.LinkByName(dev); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", dev, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(IMDSAddress), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("adding %s/32 to %s: %w", IMDSAddress, dev, err)
	}
	return func() error { return netlink.AddrDel(link, addr) }, nil
}

// IPTables installs and reconciles the DNAT of 169.254.169.254:80 to
// target (the agent's ip:port).
type IPTables struct {
	Target string
	// Binary is the iptables command; "iptables" by default.
	Binary string
	Log    *slog.Logger
}

func (t *IPTables) run(ctx context.Context, args ...string) error {
	bin := t.Binary
	if bin == "" {
		bin = "iptables"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"-w", "5", "-t", "nat"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (t *IPTables) rules() [][]string {
	return [][]string{
		{chain, "-d", IMDSAddress + "/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", t.Target},
		{"PREROUTING", "-d", IMDSAddress + "/32", "-p", "tcp", "--dport", "80", "-j", chain},
		{"OUTPUT", "-d", IMDSAddress + "/32", "-p", "tcp", "--dport", "80", "-m", "mark", "!", "--mark", fmt.Sprintf("0x%x", AgentMark), "-j", chain},
	}
}

// Ensure creates the chain and rules that are missing. The chain holds
// exactly the DNAT to Target (a rule left by an earlier target is flushed),
// and the jumps go first in their chains, so no earlier rule can take the
// traffic.
func (t *IPTables) Ensure(ctx context.Context) error {
	if _, _, err := net.SplitHostPort(t.Target); err != nil {
		return fmt.Errorf("redirect target %q must be ip:port: %w", t.Target, err)
	}
	if t.run(ctx, "-L", chain, "-n") != nil {
		if err := t.run(ctx, "-N", chain); err != nil {
			return err
		}
	}
	rs := t.rules()
	if t.run(ctx, append([]string{"-C"}, rs[0]...)...) != nil {
		if err := t.run(ctx, "-F", chain); err != nil {
			return err
		}
		if err := t.run(ctx, append([]string{"-A"}, rs[0]...)...); err != nil {
			return err
		}
	}
	for _, r := range rs[1:] {
		if t.run(ctx, append([]string{"-C"}, r...)...) == nil {
			continue
		}
		if err := t.run(ctx, append([]string{"-I", r[0], "1"}, r[1:]...)...); err != nil {
			return err
		}
	}
	return nil
}

// Reconcile re-applies the rules every interval until ctx ends. The rules
// stay: while a restarting agent is away, pods get connection errors, which
// the SDKs retry, rather than reach whatever else answers 169.254.169.254.
func (t *IPTables) Reconcile(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := t.Ensure(ctx); err != nil && ctx.Err() == nil {
				t.Log.Warn("re-installing the IMDS redirect", "error", err)
			}
		}
	}
}

// Remove deletes the rules and the chain.
func (t *IPTables) Remove(ctx context.Context) error {
	var errs []error
	rs := t.rules()
	for _, r := range rs[1:] {
		for t.run(ctx, append([]string{"-C"}, r...)...) == nil {
			if err := t.run(ctx, append([]string{"-D"}, r...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if t.run(ctx, "-L", chain, "-n") == nil {
		errs = append(errs, t.run(ctx, "-F", chain), t.run(ctx, "-X", chain))
	}
	return errors.Join(errs...)
}
