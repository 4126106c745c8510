package install

import (
	"fmt"
	"strings"
	"time"
)

// NoClusterError means the cluster could not be reached with the
// kubeconfig given.
type NoClusterError struct {
	// Host is the apiserver's URL, when the kubeconfig named one.
	Host string
	Err  error
}

func (e *NoClusterError) Error() string {
	if e.Host == "" {
		return fmt.Sprintf("no cluster access: %v (give a kubeconfig with --kubeconfig, or set KUBECONFIG)", e.Err)
	}
	return fmt.Sprintf("no cluster access: the apiserver at %s did not answer: %v (check --kubeconfig and --context)", e.Host, e.Err)
}

func (e *NoClusterError) Unwrap() error { return e.Err }

// Permission is one thing the caller must be allowed to do.
type Permission struct {
	Verb, Group, Resource, Subresource, Namespace string
}

func (p Permission) String() string {
	r := p.Resource
	if p.Subresource != "" {
		r += "/" + p.Subresource
	}
	if p.Group != "" {
		r += "." + p.Group
	}
	where := "cluster-wide"
	if p.Namespace != "" {
		where = "in namespace " + p.Namespace
	}
	return p.Verb + " " + r + " " + where
}

// MissingRBACError lists what the caller may not do, found before
// anything was changed.
type MissingRBACError struct {
	User    string
	Missing []Permission
}

func (e *MissingRBACError) Error() string {
	var b strings.Builder
	who := "you"
	if e.User != "" {
		who = e.User
	}
	fmt.Fprintf(&b, "missing RBAC: %s may not ", who)
	for i, p := range e.Missing {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.String())
	}
	b.WriteString(" (checked with SelfSubjectAccessReview before anything was changed; coffer install needs a cluster administrator's rights, such as the cluster-admin ClusterRole)")
	return b.String()
}

// ValueConflictError is a chart value that disagrees with what Install
// sets itself.
type ValueConflictError struct {
	Path        string
	Given, Want string
	Why         string
}

func (e *ValueConflictError) Error() string {
	if e.Want == "" {
		return fmt.Sprintf("the value %s (%q) conflicts with coffer install: %s; remove it from the values", e.Path, e.Given, e.Why)
	}
	return fmt.Sprintf("the value %s is %q, but coffer install needs %q: %s; remove it from the values", e.Path, e.Given, e.Want, e.Why)
}

// ChartValuesError is a value the chart itself refuses.
type ChartValuesError struct{ Err error }

func (e *ChartValuesError) Error() string {
	return fmt.Sprintf("the chart refuses these values (nothing was changed): %v", e.Err)
}

func (e *ChartValuesError) Unwrap() error { return e.Err }

// TimeoutError is a wait for readiness that ran out.
type TimeoutError struct {
	What  string
	After time.Duration
	// Last is what was last seen: the pods that were not ready, and why.
	Last string
}

func (e *TimeoutError) Error() string {
	msg := fmt.Sprintf("timed out after %s waiting for %s", e.After, e.What)
	if e.Last != "" {
		msg += ": " + e.Last
	}
	return msg
}
