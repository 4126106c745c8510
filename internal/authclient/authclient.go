// Package authclient gets access tokens from Coffer's authority (or any
// Entra-ID-style token endpoint) for node components: client credentials
// with a secret or with an assertion (a federated service-account token),
// cached per identity and refreshed before they expire.
package authclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Token is an access token and when it expires.
type Token struct {
	Value   string
	Expires time.Time
}

// Error is a refused or failed token request.
type Error struct {
	Status      int    // HTTP status; 0 when the authority was not reached
	Code        string // OAuth error, such as invalid_client
	Description string // the authority's explanation (AADSTS-style)
	RetryAfter  time.Duration
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return "authority unreachable: " + e.Description
	}
	return fmt.Sprintf("token request refused (%d %s): %s", e.Status, e.Code, e.Description)
}

// Client requests tokens from one authority.
type Client struct {
	HTTP      *http.Client
	Authority string // such as https://vault.example.com:8443
	Now       func() time.Time

	mu       sync.Mutex
	cache    map[string]*entry
	inflight map[string]*call
}

type entry struct {
	tok     Token
	refresh time.Time
}

type call struct {
	done chan struct{}
	tok  Token
	err  error
}

// Credential is one way to prove an identity.
type Credential struct {
	TenantID string
	ClientID string
	// Secret is a client secret; Assertion a signed JWT (a federated
	// service-account token). Exactly one is set.
	Secret    string
	Assertion string
}

// key identifies a credential in the cache. It hashes the proof itself, so
// a token obtained with one proof is never handed to a caller holding a
// different one for the same client id: each caller must have proved who
// it is.
func (c Credential) key(scope string) string {
	h := sha256.New()
	for _, s := range []string{c.TenantID, c.ClientID, c.Secret, c.Assertion, scope} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Token returns a token for scope (such as https://vault.example.com/.default),
// from the cache while it has more than a quarter of its life left (and at
// least a minute), and fetches one otherwise; concurrent callers with the
// same credential share one request.
func (c *Client) Token(ctx context.Context, cred Credential, scope string) (Token, error) {
	k := cred.key(scope)
	c.mu.Lock()
	if c.cache == nil {
		c.cache, c.inflight = map[string]*entry{}, map[string]*call{}
	}
	if e, ok := c.cache[k]; ok && c.now().Before(e.refresh) {
		c.mu.Unlock()
		return e.tok, nil
	}
	if cl, ok := c.inflight[k]; ok {
		c.mu.Unlock()
		select {
		case <-cl.done:
			return cl.tok, cl.err
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[k] = cl
	c.mu.Unlock()

	// Callers share this request: one caller's cancellation must not fail
	// the others, so it runs on its own deadline.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	cl.tok, cl.err = c.fetch(fctx, cred, scope)
	cancel()
	c.mu.Lock()
	delete(c.inflight, k)
	if cl.err == nil {
		now := c.now()
		life := cl.tok.Expires.Sub(now)
		c.cache[k] = &entry{tok: cl.tok, refresh: now.Add(min(life*3/4, life-time.Minute))}
		for key, e := range c.cache { // drop what can no longer be used
			if !now.Before(e.tok.Expires) {
				delete(c.cache, key)
			}
		}
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.tok, cl.err
}

func (c *Client) fetch(ctx context.Context, cred Credential, scope string) (Token, error) {
	if (cred.Secret == "") == (cred.Assertion == "") {
		return Token{}, fmt.Errorf("a credential needs exactly one of a client secret and an assertion")
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {cred.ClientID}, "scope": {scope}}
	if cred.Secret != "" {
		form.Set("client_secret", cred.Secret)
	} else {
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", cred.Assertion)
	}
	u := strings.TrimSuffix(c.Authority, "/") + "/" + url.PathEscape(cred.TenantID) + "/oauth2/v2.0/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return Token{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	start := c.now()
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Token{}, &Error{Description: err.Error()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return Token{}, &Error{Description: "reading the token response: " + err.Error()}
	}
	var out struct {
		AccessToken string          `json:"access_token"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
		Error       string          `json:"error"`
		Description string          `json:"error_description"`
	}
	json.Unmarshal(body, &out)
	if resp.StatusCode != http.StatusOK || out.AccessToken == "" {
		e := &Error{Status: resp.StatusCode, Code: out.Error, Description: out.Description}
		if e.Description == "" {
			e.Description = http.StatusText(resp.StatusCode)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		return Token{}, e
	}
	secs, err := strconv.Atoi(strings.Trim(string(out.ExpiresIn), `"`))
	if err != nil || secs <= 0 {
		return Token{}, &Error{Status: resp.StatusCode, Code: "bad_response", Description: "the token response has no valid expires_in"}
	}
	return Token{Value: out.AccessToken, Expires: start.Add(time.Duration(secs) * time.Second)}, nil
}
