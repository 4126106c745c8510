package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Conn is one keep-alive HTTPS/1.1 connection that sends a request and reads
// the response in the calling goroutine. net/http's client hands every
// request to two more goroutines, which on a small machine steals CPU from
// the server being measured; this client does not.
type Conn struct {
	host string
	tc   *tls.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

// Dial connects to rawURL's host, trusting roots. resolve may rewrite the
// dialled address (for *.localhost).
func Dial(ctx context.Context, rawURL string, roots *x509.CertPool, resolve func(string) string) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	if resolve != nil {
		addr = resolve(addr)
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{ServerName: u.Hostname(), RootCAs: roots, NextProtos: []string{"http/1.1"}}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	return &Conn{host: u.Host, tc: tc, br: bufio.NewReaderSize(tc, 16<<10), bw: bufio.NewWriterSize(tc, 16<<10)}, nil
}

// Do sends one request (a JSON body, if any) and drains the response,
// returning its status.
func (c *Conn) Do(method, pathAndQuery, bearer string, body []byte) (int, error) {
	return c.Send(method, pathAndQuery, bearer, "application/json", body)
}

// Send is Do with a content type; an empty bearer sends no Authorization.
func (c *Conn) Send(method, pathAndQuery, bearer, contentType string, body []byte) (int, error) {
	return c.roundTrip(method, pathAndQuery, bearer, contentType, body, io.Discard)
}

// Body sends a request without a body and returns the answer's body, for
// a caller that wants the exact bytes a server answers.
func (c *Conn) Body(method, pathAndQuery, bearer string) ([]byte, error) {
	var b bytes.Buffer
	status, err := c.roundTrip(method, pathAndQuery, bearer, "", nil, &b)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("HTTP %d", status)
	}
	return b.Bytes(), err
}

func (c *Conn) roundTrip(method, pathAndQuery, bearer, contentType string, body []byte, into io.Writer) (int, error) {
	c.tc.SetDeadline(time.Now().Add(30 * time.Second))
	w := c.bw
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(pathAndQuery)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(c.host)
	if bearer != "" {
		w.WriteString("\r\nAuthorization: Bearer ")
		w.WriteString(bearer)
	}
	if body != nil {
		w.WriteString("\r\nContent-Type: ")
		w.WriteString(contentType)
		w.WriteString("\r\nContent-Length: ")
		w.WriteString(strconv.Itoa(len(body)))
	}
	w.WriteString("\r\n\r\n")
	w.Write(body)
	if err := w.Flush(); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(into, resp.Body)
	resp.Body.Close()
	if err == nil && resp.Close {
		err = fmt.Errorf("server closed the connection")
	}
	return resp.StatusCode, err
}

// SetHost changes the Host header of the requests that follow, so that one
// connection can reach every vault of a server that routes by Host (its
// certificate covers them all). The TLS server name stays the dialled one.
func (c *Conn) SetHost(host string) { c.host = host }

// Close closes the connection.
func (c *Conn) Close() error { return c.tc.Close() }
