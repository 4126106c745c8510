// Package kvclient is a lean Key Vault data-plane reader for node
// components: secrets, keys, certificates and their version lists, with
// conditional reads (If-None-Match) so an unchanged object costs no value
// transfer. It takes a bearer token from its caller and knows nothing of
// how it was obtained.
package kvclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// APIVersion is the api-version the client speaks.
const APIVersion = "7.6"

// MaxBody bounds one response; a Key Vault object is far smaller.
const MaxBody = 1 << 20

// Client reads objects over a shared HTTP client.
type Client struct {
	HTTP *http.Client
}

// Error is a failed read, classified for callers that report it.
type Error struct {
	Status     int    // HTTP status; 0 when the vault was not reached
	Code       string // Key Vault error code, such as SecretNotFound
	Inner      string // innererror code, such as AccessDenied
	Message    string // the vault's message, or the transport error
	RetryAfter time.Duration
	Err        error // the transport error, when the vault was not reached
}

// Unwrap returns the transport error, if any.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	switch {
	case e.Status == 0:
		return "vault unreachable: " + e.Message
	case e.Inner != "":
		return fmt.Sprintf("%d %s/%s: %s", e.Status, e.Code, e.Inner, e.Message)
	default:
		return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	}
}

// Classify returns err's mount error code: by status for vault answers,
// Unreachable for transport failures.
func Classify(err error) mounterr.Code {
	var e *Error
	if !errors.As(err, &e) {
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
			return mounterr.Unreachable
		}
		return mounterr.Internal
	}
	switch {
	case e.Status == 0 || e.Status >= 500:
		return mounterr.Unreachable
	case e.Status == http.StatusNotFound:
		return mounterr.NotFound
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		return mounterr.Forbidden
	case e.Status == http.StatusTooManyRequests:
		return mounterr.Throttled
	case e.Status == http.StatusBadRequest:
		return mounterr.InvalidParameter
	}
	return mounterr.Internal
}

// Attributes are an object version's lifecycle attributes.
type Attributes struct {
	Enabled bool  `json:"enabled"`
	Created int64 `json:"created"`
	Updated int64 `json:"updated"`
	NBF     int64 `json:"nbf"`
	Exp     int64 `json:"exp"`
}

// Secret is a secret version as the vault returns it.
type Secret struct {
	ID          string     `json:"id"`
	Value       string     `json:"value"`
	ContentType string     `json:"contentType"`
	Managed     bool       `json:"managed"`
	KID         string     `json:"kid"`
	Attributes  Attributes `json:"attributes"`
}

// Key is a key version: its public part.
type Key struct {
	Key        keyops.JWK `json:"key"`
	Attributes Attributes `json:"attributes"`
}

// Certificate is a certificate version: the DER certificate.
type Certificate struct {
	ID         string     `json:"id"`
	CER        []byte     `json:"cer"`
	Attributes Attributes `json:"attributes"`
}

// Item is one entry of a version list.
type Item struct {
	ID         string     `json:"id"`
	KID        string     `json:"kid"`
	Attributes Attributes `json:"attributes"`
}

// Version returns the version an item's id ends with.
func (it Item) Version() string { return VersionOf(it.ID + it.KID) }

// VersionOf returns the last path segment of an object id.
func VersionOf(id string) string { return id[strings.LastIndexByte(id, '/')+1:] }

// Get reads {base}/{collection}/{name}[/{version}] into out. With etag set,
// a 304 answer leaves out untouched and returns notModified. It returns the
// response's ETag.
func (c *Client) Get(ctx context.Context, base, token, collection, name, version, etag string, out any) (newTag string, notModified bool, err error) {
	u := strings.TrimSuffix(base, "/") + "/" + collection + "/" + url.PathEscape(name)
	if version != "" {
		u += "/" + url.PathEscape(version)
	}
	resp, err := c.do(ctx, u+"?api-version="+APIVersion, token, etag, "")
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return resp.Header.Get("ETag"), true, nil
	}
	if err := decode(resp, out); err != nil {
		return "", false, err
	}
	return resp.Header.Get("ETag"), false, nil
}

// ErrNotHeld means the vault answered a held read at once, without
// holding it: it does not support Prefer: wait (an older Coffer, or Azure),
// so asking again would only spin.
var ErrNotHeld = errors.New("the vault does not hold conditional reads (Prefer: wait)")

// Held is how a held read ended.
type Held struct {
	// ETag is the object's tag now: the new one after a change, else the
	// one waited on.
	ETag string
	// Changed reports that the object no longer matches the tag waited on.
	Changed bool
	// Undecoded, after a change, is why out does not hold the new state:
	// the body was over MaxBody or not the expected JSON. The change
	// stands; the caller reads the object through its own path, which
	// reports the problem where it belongs.
	Undecoded error
}

// Wait asks the vault to hold a conditional read of the latest version of
// {collection}/{name} until it no longer matches etag, for at most wait.
// When the object changed, the answer carries its new state, which Wait
// decodes into out as Get would (out nil: the body is dropped), so the
// caller need not transfer the value again. The client's own timeout must
// be longer than wait.
func (c *Client) Wait(ctx context.Context, base, token, collection, name, etag string, wait time.Duration, out any) (Held, error) {
	u := strings.TrimSuffix(base, "/") + "/" + collection + "/" + url.PathEscape(name) + "?api-version=" + APIVersion
	resp, err := c.do(ctx, u, token, etag, "wait="+strconv.Itoa(max(1, int(wait/time.Second))))
	if err != nil {
		return Held{}, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		if resp.Header.Get("Preference-Applied") == "" {
			return Held{}, ErrNotHeld
		}
		return Held{ETag: etag}, nil
	case http.StatusOK:
		h := Held{ETag: resp.Header.Get("ETag"), Changed: true}
		if out == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxBody))
			return h, nil
		}
		h.Undecoded = decode(resp, out)
		return h, nil
	}
	return Held{}, decode(resp, nil)
}

// Versions lists every version of {collection}/{name}, following nextLink
// within the same vault only.
func (c *Client) Versions(ctx context.Context, base, token, collection, name string) ([]Item, error) {
	base = strings.TrimSuffix(base, "/")
	next := base + "/" + collection + "/" + url.PathEscape(name) + "/versions?api-version=" + APIVersion
	var all []Item
	for pages := 0; next != ""; pages++ {
		if pages == 1000 {
			return nil, fmt.Errorf("listing versions of %s: more than 1000 pages", name)
		}
		if !strings.HasPrefix(next, base+"/") {
			return nil, fmt.Errorf("listing versions of %s: the vault's nextLink %q leaves the vault", name, next)
		}
		resp, err := c.do(ctx, next, token, "", "")
		if err != nil {
			return nil, err
		}
		var page struct {
			Value    []Item  `json:"value"`
			NextLink *string `json:"nextLink"`
		}
		err = decode(resp, &page)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		all = append(all, page.Value...)
		next = ""
		if page.NextLink != nil {
			next = *page.NextLink
		}
	}
	return all, nil
}

// do sends a GET of u with token, conditional on etag and with an RFC 7240
// preference when they are set.
func (c *Client) do(ctx context.Context, u, token, etag, prefer string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if prefer != "" {
		req.Header.Set("Prefer", prefer)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &Error{Message: err.Error(), Err: err}
	}
	return resp, nil
}

// decode reads a JSON body of at most MaxBody bytes into out, or turns an
// error answer into *Error.
func decode(resp *http.Response, out any) error {
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return &Error{Message: "reading the response: " + err.Error()}
	}
	if len(body) > MaxBody {
		return &Error{Status: resp.StatusCode, Code: "ResponseTooLarge", Message: fmt.Sprintf("the response is over %d bytes", MaxBody)}
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		if eb, ok := azerror.Parse(body); ok {
			e.Code, e.Message, e.Inner = eb.Error.Code, eb.Error.Message, eb.Inner()
		}
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			e.RetryAfter = time.Duration(min(s, 86400)) * time.Second // no overflow from a huge value
		}
		return e
	}
	if err := json.Unmarshal(body, out); err != nil {
		return &Error{Status: resp.StatusCode, Code: "BadResponse", Message: "the response is not the expected JSON: " + err.Error()}
	}
	return nil
}
