// Package authclient gets access tokens from Coffer's authority (or any
// Entra-ID-style token endpoint) for node components: client credentials
// with a secret or with an assertion (a federated service-account token),
// cached per identity and refreshed before they expire.
package authclient

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
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
	// Claims are read from the token without verifying it (it came over
	// TLS from the authority): who it was issued to, so callers can match
	// an identity by object id or resource id.
	Claims Claims
}

// Claims are the identity claims of an access token.
type Claims struct {
	Subject    string `json:"sub"`
	ObjectID   string `json:"oid"`
	AppID      string `json:"appid"`
	TenantID   string `json:"tid"`
	ResourceID string `json:"xms_mirid"`
	NotBefore  int64  `json:"nbf"`
	Expiry     int64  `json:"exp"`
}

// Error is a refused or failed token request.
type Error struct {
	Status      int    // HTTP status; 0 when the authority was not reached
	Code        string // OAuth error, such as invalid_client
	Description string // the authority's explanation (AADSTS-style)
	RetryAfter  time.Duration
	Err         error // the transport error, when the authority was not reached
}

// Unwrap returns the transport error, if any.
func (e *Error) Unwrap() error { return e.Err }

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
	// service-account token); Sign makes a fresh certificate-signed
	// assertion for each request, since the authority refuses a replayed
	// one. Exactly one is set.
	Secret    string
	Assertion string
	Sign      func() (string, error)
	// SignerID names Sign's key (a certificate thumbprint) in the cache.
	SignerID string
	// ActFor asks for a token of a managed identity the client may act as
	// (Coffer's mi_client_id, mi_object_id and mi_res_id form fields): how
	// node agents serve pods.
	ActFor Selector
}

// Selector names a managed identity by one of its ids.
type Selector struct {
	ClientID   string
	ObjectID   string
	ResourceID string
}

// key identifies a credential in the cache. It hashes the proof itself, so
// a token obtained with one proof is never handed to a caller holding a
// different one for the same client id: each caller must have proved who
// it is.
func (c Credential) key(scope string) string {
	h := sha256.New()
	for _, s := range []string{c.TenantID, c.ClientID, c.Secret, c.Assertion, c.SignerID, c.ActFor.ClientID, c.ActFor.ObjectID, c.ActFor.ResourceID, scope} {
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
// least a minute). After that the cached token is still answered while it
// is good, and a background request replaces it; only a caller with no
// usable token waits. Concurrent callers with the same credential share one
// request.
func (c *Client) Token(ctx context.Context, cred Credential, scope string) (Token, error) {
	k := cred.key(scope)
	c.mu.Lock()
	if c.cache == nil {
		c.cache, c.inflight = map[string]*entry{}, map[string]*call{}
	}
	now := c.now()
	if e, ok := c.cache[k]; ok && now.Before(e.refresh) {
		c.mu.Unlock()
		return e.tok, nil
	} else if ok && now.Before(e.tok.Expires.Add(-stale)) {
		// Past its refresh time but still good: answer from the cache and
		// refresh in the background, so no caller waits on the authority
		// while a usable token exists.
		if _, busy := c.inflight[k]; !busy {
			cl := &call{done: make(chan struct{})}
			c.inflight[k] = cl
			go c.run(context.WithoutCancel(ctx), k, cl, cred, scope)
		}
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
	c.run(ctx, k, cl, cred, scope)
	return cl.tok, cl.err
}

// stale is how close to expiry a cached token stops being handed out.
const stale = 30 * time.Second

// run fetches a token for the call cl and publishes it.
func (c *Client) run(ctx context.Context, k string, cl *call, cred Credential, scope string) {
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
}

func (c *Client) fetch(ctx context.Context, cred Credential, scope string) (Token, error) {
	proofs := 0
	for _, set := range []bool{cred.Secret != "", cred.Assertion != "", cred.Sign != nil} {
		if set {
			proofs++
		}
	}
	if proofs != 1 {
		return Token{}, fmt.Errorf("a credential needs exactly one of a client secret, an assertion and a signer")
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {cred.ClientID}, "scope": {scope}}
	switch {
	case cred.Secret != "":
		form.Set("client_secret", cred.Secret)
	default:
		assertion := cred.Assertion
		if cred.Sign != nil {
			var err error
			if assertion, err = cred.Sign(); err != nil {
				return Token{}, fmt.Errorf("signing the client assertion: %w", err)
			}
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", assertion)
	}
	for name, v := range map[string]string{"mi_client_id": cred.ActFor.ClientID, "mi_object_id": cred.ActFor.ObjectID, "mi_res_id": cred.ActFor.ResourceID} {
		if v != "" {
			form.Set(name, v)
		}
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
		return Token{}, &Error{Description: err.Error(), Err: err}
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
		return Token{}, refusal(resp, out.Error, out.Description)
	}
	secs, err := strconv.Atoi(strings.Trim(string(out.ExpiresIn), `"`))
	if err != nil || secs <= 0 {
		return Token{}, &Error{Status: resp.StatusCode, Code: "bad_response", Description: "the token response has no valid expires_in"}
	}
	return Token{Value: out.AccessToken, Expires: start.Add(time.Duration(secs) * time.Second), Claims: ReadClaims(out.AccessToken)}, nil
}

// ReadClaims decodes a JWT's payload without verifying it; a token that is
// not a JWT has no claims.
func ReadClaims(raw string) Claims {
	var c Claims
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return c
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err == nil {
		json.Unmarshal(b, &c)
	}
	return c
}

// refusal is the Error for a refused token request.
func refusal(resp *http.Response, code, description string) *Error {
	e := &Error{Status: resp.StatusCode, Code: code, Description: description}
	if e.Description == "" {
		e.Description = http.StatusText(resp.StatusCode)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		e.RetryAfter = time.Duration(min(s, 86400)) * time.Second // no overflow from a huge value
	}
	return e
}
