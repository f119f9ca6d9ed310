package reslimitgrpc_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/reslimit/reslimit"
	reslimitgrpc "github.com/reslimit/reslimit/contrib/grpc"
)

// ExampleUnaryServerInterceptor serves the standard health service on a
// loopback port with every call run as one evaluation of the tenant named
// by the "tenant" metadata key. The tenant may make two evaluations: the
// third call is refused before it runs (not billed), and a call without a
// tenant is unauthenticated.
func ExampleUnaryServerInterceptor() {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxEvaluations: 2})
	if err != nil {
		panic(err)
	}
	defer ledger.Close(context.Background())

	tenant := func(ctx context.Context, fullMethod string) (string, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("tenant"); len(v) == 1 {
			return v[0], nil
		}
		return "", errors.New("no tenant")
	}
	unary, err := reslimitgrpc.UnaryServerInterceptor(ledger, tenant, reslimit.Limits{Timeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(unary))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	check := func(ctx context.Context) {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			fmt.Println(resp.GetStatus())
			return
		}
		s := status.Convert(err)
		fmt.Print(s.Code())
		for _, d := range s.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				fmt.Print(": ", info.GetMetadata()["resource"], ", billed ", info.GetMetadata()["billed"])
			}
		}
		fmt.Println()
	}
	acme := metadata.AppendToOutgoingContext(context.Background(), "tenant", "acme")
	check(acme)
	check(acme)
	check(acme)
	check(context.Background())
	fmt.Println("acme evaluations:", ledger.Account("acme").Stats().Evaluations)
	// Output:
	// SERVING
	// SERVING
	// ResourceExhausted: evaluations, billed false
	// Unauthenticated
	// acme evaluations: 2
}
