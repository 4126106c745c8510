// Package push is Coffer's extension to the Secrets Store provider
// protocol: a provider tells the driver which mounted volumes hold an
// object that just changed in the vault, so the driver refreshes them at
// once instead of at its next rotation interval. It is a gRPC service on
// the provider's socket beside the upstream v1alpha1 one; the upstream
// driver never calls it, and a provider without it answers Unimplemented,
// so either side falls back to interval rotation alone.
//
// The service is defined in proto/coffer/provider/v1/push.proto and
// specified in docs/push-protocol.md; push.pb.go and push_grpc.pb.go are
// generated from it by scripts/gen-proto.sh. This file adapts the
// generated service to the two sides' Go API: Register for a provider,
// Watch and Forget for a driver.
package push

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "coffer.provider.v1.Push"

// ErrNoTarget is a Forget without a target path.
var ErrNoTarget = errors.New("push: Forget needs a target path")

// Handler is the provider's side.
type Handler interface {
	// Watch sends an empty target once it is listening, then the target
	// path of each volume to refresh, until ctx ends or a send fails.
	Watch(ctx context.Context, send func(target string) error) error
	// Forget stops watching for a volume that is gone.
	Forget(target string)
}

// Register adds h as the Push service of g.
func Register(g grpc.ServiceRegistrar, h Handler) {
	RegisterPushServer(g, server{h: h})
}

// server serves the generated service with a Handler.
type server struct {
	UnimplementedPushServer
	h Handler
}

func (s server) Watch(_ *WatchRequest, stream grpc.ServerStreamingServer[WatchResponse]) error {
	return s.h.Watch(stream.Context(), func(target string) error {
		return stream.Send(&WatchResponse{TargetPath: target})
	})
}

func (s server) Forget(_ context.Context, req *ForgetRequest) (*ForgetResponse, error) {
	if req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, ErrNoTarget.Error())
	}
	s.h.Forget(req.GetTargetPath())
	return &ForgetResponse{}, nil
}

// Watch subscribes to the provider behind conn: it calls listening once
// the provider is listening, then changed with the target path of each
// volume it reports, until ctx ends or the stream breaks. A provider
// without the service fails it with codes.Unimplemented.
func Watch(ctx context.Context, conn grpc.ClientConnInterface, listening func(), changed func(target string)) error {
	stream, err := NewPushClient(conn).Watch(ctx, &WatchRequest{})
	if err != nil {
		return err
	}
	heard := false
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		switch {
		case msg.GetTargetPath() != "":
			changed(msg.GetTargetPath())
		case !heard:
			heard = true
			listening()
		}
	}
}

// Forget tells the provider behind conn that a volume is gone.
func Forget(ctx context.Context, conn grpc.ClientConnInterface, target string) error {
	if target == "" {
		return ErrNoTarget
	}
	if _, err := NewPushClient(conn).Forget(ctx, &ForgetRequest{TargetPath: target}); err != nil {
		return fmt.Errorf("push: forget %s: %w", target, err)
	}
	return nil
}
