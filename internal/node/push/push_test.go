package push

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// handler is a provider that reports the targets it is given.
type handler struct {
	reports chan string
	mu      sync.Mutex
	forgot  []string
}

func newHandler() *handler { return &handler{reports: make(chan string, 10)} }

func (h *handler) Watch(ctx context.Context, send func(string) error) error {
	if err := send(""); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case target, ok := <-h.reports:
			if !ok {
				return nil
			}
			if err := send(target); err != nil {
				return err
			}
		}
	}
}

func (h *handler) Forget(target string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forgot = append(h.forgot, target)
}

func (h *handler) forgotten() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.forgot...)
}

// serve runs a gRPC server on a unix socket in a temporary directory, as a
// provider's, with register's services, and returns a connection to it.
func serve(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "provider.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// watchFunc is Watch's signature, so a test can run the current client or
// the first version's.
type watchFunc func(ctx context.Context, conn grpc.ClientConnInterface, listening func(), changed func(string)) error

// forgetFunc is Forget's.
type forgetFunc func(ctx context.Context, conn grpc.ClientConnInterface, target string) error

// Every pairing of the current code with the first version's (the
// hand-built service over google.protobuf's wrappers, below) speaks the
// same protocol: listening first, then each reported volume, and Forget.
func TestWatchAndForget(t *testing.T) {
	tests := map[string]struct {
		register func(*grpc.Server, Handler)
		watch    watchFunc
		forget   forgetFunc
	}{
		"current driver, current provider": {register: func(g *grpc.Server, h Handler) { Register(g, h) }, watch: Watch, forget: Forget},
		"current driver, first provider":   {register: registerV0, watch: Watch, forget: Forget},
		"first driver, current provider":   {register: func(g *grpc.Server, h Handler) { Register(g, h) }, watch: watchV0, forget: forgetV0},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHandler()
			conn := serve(t, func(g *grpc.Server) { test.register(g, h) })
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			listening := make(chan struct{})
			changed := make(chan string, 10)
			ended := make(chan error, 1)
			go func() {
				ended <- test.watch(ctx, conn, func() { close(listening) }, func(target string) { changed <- target })
			}()
			select {
			case <-listening:
			case err := <-ended:
				t.Fatalf("Watch ended before listening: %v", err)
			case <-ctx.Done():
				t.Fatal("the provider never said it was listening")
			}
			for _, target := range []string{"/pods/a/vol", "/pods/b/vol"} {
				h.reports <- target
				select {
				case got := <-changed:
					if got != target {
						t.Fatalf("reported %q, want %q", got, target)
					}
				case <-ctx.Done():
					t.Fatalf("%s was never reported", target)
				}
			}
			// The provider ends the stream (it is stopping): Watch returns.
			close(h.reports)
			if err := <-ended; err == nil {
				t.Fatal("Watch returned nil for an ended stream; the driver could not tell it to reconnect")
			}
			if err := test.forget(ctx, conn, "/pods/a/vol"); err != nil {
				t.Fatal(err)
			}
			if got := h.forgotten(); len(got) != 1 || got[0] != "/pods/a/vol" {
				t.Fatalf("the provider forgot %q", got)
			}
		})
	}
}

// A provider without the service (the upstream ones) answers both calls
// Unimplemented, which the driver takes for "rotate on the interval".
func TestUnimplemented(t *testing.T) {
	conn := serve(t, func(*grpc.Server) {})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := Watch(ctx, conn, func() { t.Error("listening without a service") }, func(string) { t.Error("a report without a service") })
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("Watch: %v, want Unimplemented", err)
	}
	if err := Forget(ctx, conn, "/pods/a/vol"); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Forget: %v, want Unimplemented", err)
	}
}

// A Forget without a target is refused on both sides: it names no volume.
func TestForgetNeedsATarget(t *testing.T) {
	h := newHandler()
	conn := serve(t, func(g *grpc.Server) { Register(g, h) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Forget(ctx, conn, ""); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("Forget(\"\"): %v", err)
	}
	if _, err := NewPushClient(conn).Forget(ctx, &ForgetRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("the provider answered an empty Forget with %v, want InvalidArgument", err)
	}
	if got := h.forgotten(); len(got) != 0 {
		t.Fatalf("the provider forgot %q", got)
	}
}

// The first version of the service, before it had a .proto: a hand-built
// service description over google.protobuf.Empty and StringValue, kept
// here to show that the generated one speaks its wire format.

func registerV0(g *grpc.Server, h Handler) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*Handler)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Forget",
			Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.StringValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				srv.(Handler).Forget(in.GetValue())
				return &emptypb.Empty{}, nil
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Watch",
			ServerStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
					return err
				}
				return srv.(Handler).Watch(stream.Context(), func(target string) error {
					return stream.SendMsg(wrapperspb.String(target))
				})
			},
		}},
	}, h)
}

func watchV0(ctx context.Context, conn grpc.ClientConnInterface, listening func(), changed func(string)) error {
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}, "/"+ServiceName+"/Watch")
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	heard := false
	for {
		msg := &wrapperspb.StringValue{}
		if err := stream.RecvMsg(msg); err != nil {
			return err
		}
		switch {
		case msg.GetValue() != "":
			changed(msg.GetValue())
		case !heard:
			heard = true
			listening()
		}
	}
}

func forgetV0(ctx context.Context, conn grpc.ClientConnInterface, target string) error {
	return conn.Invoke(ctx, "/"+ServiceName+"/Forget", wrapperspb.String(target), &emptypb.Empty{})
}
