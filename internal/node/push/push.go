// Package push is Coffer's extension to the Secrets Store provider
// protocol: a provider tells the driver which mounted volumes hold an
// object that just changed in the vault, so the driver refreshes them at
// once instead of at its next rotation interval. It is a gRPC service on
// the provider's socket beside the upstream v1alpha1 one; the upstream
// driver never calls it, and a provider without it answers Unimplemented,
// so either side falls back to interval rotation alone.
//
// The messages are protobuf's well-known wrapper types, so the service
// needs no generated code: Watch takes an Empty and streams StringValues,
// each a volume's target path (the first one empty: the provider is
// listening); Forget takes a target path and returns an Empty.
package push

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "coffer.provider.v1.Push"

const (
	watchMethod  = "/" + ServiceName + "/Watch"
	forgetMethod = "/" + ServiceName + "/Forget"
)

// Handler is the provider's side.
type Handler interface {
	// Watch sends an empty target once it is listening, then the target
	// path of each volume to refresh, until ctx ends or a send fails.
	Watch(ctx context.Context, send func(target string) error) error
	// Forget stops watching for a volume that is gone.
	Forget(target string)
}

// Register adds h as the Push service of g.
func Register(g *grpc.Server, h Handler) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*Handler)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Forget",
			Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.StringValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				forget := func(_ context.Context, req any) (any, error) {
					srv.(Handler).Forget(req.(*wrapperspb.StringValue).GetValue())
					return &emptypb.Empty{}, nil
				}
				if interceptor == nil {
					return forget(ctx, in)
				}
				return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: forgetMethod}, forget)
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

// Watch subscribes to the provider behind conn: it calls listening once
// the provider is listening, then changed with the target path of each
// volume it reports, until ctx ends or the stream breaks. A provider
// without the service fails it with codes.Unimplemented.
func Watch(ctx context.Context, conn grpc.ClientConnInterface, listening func(), changed func(target string)) error {
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}, watchMethod)
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

// Forget tells the provider behind conn that a volume is gone.
func Forget(ctx context.Context, conn grpc.ClientConnInterface, target string) error {
	if target == "" {
		return errors.New("push: Forget needs a target path")
	}
	if err := conn.Invoke(ctx, forgetMethod, wrapperspb.String(target), &emptypb.Empty{}); err != nil {
		return fmt.Errorf("push: forget %s: %w", target, err)
	}
	return nil
}
