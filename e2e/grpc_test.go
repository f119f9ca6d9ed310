package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/reslimit/reslimit"
	reslimitgrpc "github.com/reslimit/reslimit/contrib/grpc"
)

// grpcMethod is the one method of the gRPC service below.
const grpcMethod = "/reslimit.e2e.Tools/Ops"

// grpcTools is a gRPC service whose one method runs the ops tool (a
// Limit'ed tool nesting another) inside the call's run.
func grpcTools(tl *tools) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "reslimit.e2e.Tools",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Ops",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, _ any) (any, error) {
					if _, err := tl.byName["ops"](ctx, struct{}{}); err != nil {
						return nil, err
					}
					return wrapperspb.String("ok"), nil
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: grpcMethod}, h)
			},
		}},
	}
}

// serveGRPC serves grpcTools for r's ledger on loopback behind
// reslimitgrpc's interceptor (tenant from the "tenant" metadata) and
// returns a client connection to it; both end with t.
func serveGRPC(t *testing.T, r *replica, tl *tools) *grpc.ClientConn {
	t.Helper()
	tenant := func(ctx context.Context, _ string) (string, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("tenant"); len(v) == 1 {
			return v[0], nil
		}
		return "", nil
	}
	unary, err := reslimitgrpc.UnaryServerInterceptor(r.ledger, tenant, toolLimits)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(unary))
	srv.RegisterService(grpcTools(tl), nil)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// gRPC calls composed with the rest: two replicas on one store, each
// serving gRPC behind reslimitgrpc's interceptor, each call one
// evaluation of its tenant that runs a nested Limit'ed tool: the store
// bills exactly what the calls were granted.
func TestGRPCBilledThroughTheStore(t *testing.T) {
	const calls = 20 // per replica
	f := newFleet(t, fleetConfig{replicas: 2, plans: map[string]reslimit.AccountLimits{"acme": {MaxTotalOperations: 1_000_000}}})
	tl := newTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "tenant", "acme")
	var ok int64
	for _, r := range f.replicas {
		conn := serveGRPC(t, r, tl)
		for range calls {
			if err := conn.Invoke(ctx, grpcMethod, wrapperspb.String(""), new(wrapperspb.StringValue)); err != nil {
				t.Fatalf("a call to %s: %v", r.id, err)
			}
			ok++
		}
	}
	f.Close()
	got := totalsOf(f.storePeriod("acme", 0).Totals)
	want := granted{Evaluations: ok, Operations: ok * toolOps, Calls: ok * toolCalls, TotalMemory: ok * toolMem}
	if got != want {
		t.Errorf("the store billed %v for %d gRPC calls, want %v", got, ok, want)
	}
}
