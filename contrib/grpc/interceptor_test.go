package reslimitgrpc_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/reslimit/reslimit"
	reslimitgrpc "github.com/reslimit/reslimit/contrib/grpc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The test service, registered by hand (no generated code): the request
// is a StringValue naming what the handler does, the response the tenant
// and what it did.
//
//	"ok"          answers at once
//	"tool:N"      calls a tool wrapped with reslimit.Limit that counts N operations
//	"ops:N"       counts N operations on the call's tracker, returns its error
//	"sleep"       waits for its context, returns ctx.Err()
//	"status"      returns status NotFound
//	"wait"        signals started, then waits for its context
const (
	unaryMethod  = "/reslimit.test.Svc/Unary"
	streamMethod = "/reslimit.test.Svc/Stream"
)

type service struct {
	tool    func(context.Context, int64) (int64, error)
	started chan struct{}
}

func newService() *service {
	s := &service{started: make(chan struct{}, 16)}
	s.tool = reslimit.Limit(func(ctx context.Context, n int64) (int64, error) {
		return n, reslimit.FromContext(ctx).TrackOperations(n)
	}, reslimit.Limits{MaxOperations: 1000})
	return s
}

func (s *service) do(ctx context.Context, what string) (string, error) {
	who := reslimitgrpc.Tenant(ctx)
	if reslimit.FromContext(ctx) == nil {
		return "", status.Error(codes.Internal, "no tracker in the handler's context")
	}
	cmd, arg, _ := strings.Cut(what, ":")
	n, _ := strconv.ParseInt(arg, 10, 64)
	switch cmd {
	case "ok":
		return who, nil
	case "tool":
		got, err := s.tool(ctx, n)
		if err != nil {
			return "", err
		}
		return who + ":" + strconv.FormatInt(got, 10), nil
	case "ops":
		if err := reslimit.FromContext(ctx).TrackOperations(n); err != nil {
			return "", err
		}
		return who, nil
	case "sleep":
		<-ctx.Done()
		return "", ctx.Err()
	case "wait":
		s.started <- struct{}{}
		<-ctx.Done()
		return "", ctx.Err()
	case "status":
		return "", status.Error(codes.NotFound, "no such thing")
	}
	return "", errors.New("unknown command " + what)
}

func (s *service) desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "reslimit.test.Svc",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Unary",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, req any) (any, error) {
					out, err := s.do(ctx, req.(*wrapperspb.StringValue).GetValue())
					if err != nil {
						return nil, err
					}
					return wrapperspb.String(out), nil
				}
				if icpt == nil {
					return h(ctx, in)
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: unaryMethod}, h)
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Stream",
			ServerStreams: true,
			ClientStreams: true,
			// Echoes every request's answer until the client closes.
			Handler: func(_ any, ss grpc.ServerStream) error {
				for {
					in := new(wrapperspb.StringValue)
					if err := ss.RecvMsg(in); err == io.EOF {
						return nil
					} else if err != nil {
						return err
					}
					out, err := s.do(ss.Context(), in.GetValue())
					if err != nil {
						return err
					}
					if err := ss.SendMsg(wrapperspb.String(out)); err != nil {
						return err
					}
				}
			},
		}},
	}
}

// tenantFromMetadata names the tenant from the "tenant" metadata key.
func tenantFromMetadata(ctx context.Context, _ string) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("tenant"); len(v) > 0 {
		if v[0] == "forbidden" {
			return "", status.Error(codes.PermissionDenied, "forbidden")
		}
		return v[0], nil
	}
	return "", errors.New("no tenant metadata")
}

type fixture struct {
	ledger *reslimit.Ledger
	svc    *service
	conn   *grpc.ClientConn

	mu   sync.Mutex
	errs []error // what the interceptors returned, server side
}

// serverErrs returns what the reslimit interceptors returned so far.
func (f *fixture) serverErrs() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs...)
}

// start serves the test service on 127.0.0.1:0 with the interceptors,
// behind a recorder of what they return, and dials it.
func start(t *testing.T, acctLimits reslimit.AccountLimits, limits reslimit.Limits, opts ...reslimitgrpc.Option) *fixture {
	t.Helper()
	ledger, err := reslimit.NewLedger(acctLimits)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ledger.Close(context.Background()) })
	f := &fixture{ledger: ledger, svc: newService()}
	unary, err := reslimitgrpc.UnaryServerInterceptor(ledger, tenantFromMetadata, limits, opts...)
	require.NoError(t, err)
	stream, err := reslimitgrpc.StreamServerInterceptor(ledger, tenantFromMetadata, limits, opts...)
	require.NoError(t, err)
	record := func(err error) {
		f.mu.Lock()
		f.errs = append(f.errs, err)
		f.mu.Unlock()
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			record(err)
			return resp, err
		}, unary),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			err := h(srv, ss)
			record(err)
			return err
		}, stream),
	)
	srv.RegisterService(f.svc.desc(), nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	f.conn = conn
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return f
}

func withTenant(ctx context.Context, tenant string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "tenant", tenant)
}

func (f *fixture) unary(t *testing.T, tenant, what string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if tenant != "" {
		ctx = withTenant(ctx, tenant)
	}
	out := new(wrapperspb.StringValue)
	err := f.conn.Invoke(ctx, unaryMethod, wrapperspb.String(what), out)
	return out.GetValue(), err
}

// streamCall opens a stream, sends each request and reads its answer, and
// closes; it returns the answers and the stream's error.
func (f *fixture) streamCall(t *testing.T, tenant string, what ...string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(withTenant(context.Background(), tenant), 10*time.Second)
	defer cancel()
	cs, err := f.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, streamMethod)
	if err != nil {
		return nil, err
	}
	var outs []string
	for _, w := range what {
		if err := cs.SendMsg(wrapperspb.String(w)); err != nil {
			break // the error comes with RecvMsg
		}
		out := new(wrapperspb.StringValue)
		if err := cs.RecvMsg(out); err != nil {
			return outs, err
		}
		outs = append(outs, out.GetValue())
	}
	if err := cs.CloseSend(); err != nil {
		return outs, err
	}
	if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != io.EOF {
		return outs, err
	}
	return outs, nil
}

// limitDetails returns the details of a status made for a limit.
func limitDetails(t *testing.T, err error) (*status.Status, *errdetails.ErrorInfo, *errdetails.QuotaFailure, *errdetails.RetryInfo) {
	t.Helper()
	s, ok := status.FromError(err)
	require.True(t, ok, "not a status: %v", err)
	var (
		info  *errdetails.ErrorInfo
		quota *errdetails.QuotaFailure
		retry *errdetails.RetryInfo
	)
	for _, d := range s.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.QuotaFailure:
			quota = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	require.NotNil(t, info, "no ErrorInfo in %v", s.Details())
	require.NotNil(t, quota, "no QuotaFailure in %v", s.Details())
	assert.Equal(t, reslimitgrpc.ReasonLimitExceeded, info.GetReason())
	assert.Equal(t, reslimitgrpc.Domain, info.GetDomain())
	return s, info, quota, retry
}

func TestConstructionErrors(t *testing.T) {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{})
	require.NoError(t, err)
	defer ledger.Close(context.Background())
	type ctor func(*reslimit.Ledger, reslimitgrpc.TenantFunc, reslimit.Limits, ...reslimitgrpc.Option) error
	ctors := map[string]ctor{
		"unary": func(l *reslimit.Ledger, f reslimitgrpc.TenantFunc, lim reslimit.Limits, o ...reslimitgrpc.Option) error {
			i, err := reslimitgrpc.UnaryServerInterceptor(l, f, lim, o...)
			if err == nil && i == nil {
				return errors.New("nil interceptor and nil error")
			}
			return err
		},
		"stream": func(l *reslimit.Ledger, f reslimitgrpc.TenantFunc, lim reslimit.Limits, o ...reslimitgrpc.Option) error {
			i, err := reslimitgrpc.StreamServerInterceptor(l, f, lim, o...)
			if err == nil && i == nil {
				return errors.New("nil interceptor and nil error")
			}
			return err
		},
	}
	for name, c := range ctors {
		t.Run(name, func(t *testing.T) {
			assert.ErrorIs(t, c(nil, tenantFromMetadata, reslimit.Limits{}), reslimit.ErrInvalidArgument)
			assert.ErrorIs(t, c(ledger, nil, reslimit.Limits{}), reslimit.ErrInvalidArgument)
			assert.ErrorIs(t, c(ledger, tenantFromMetadata, reslimit.Limits{Timeout: -1}), reslimit.ErrInvalidLimits)
			assert.ErrorIs(t, c(ledger, tenantFromMetadata, reslimit.Limits{}, reslimitgrpc.WithResetTime(nil)), reslimit.ErrInvalidArgument)
			assert.NoError(t, c(ledger, tenantFromMetadata, reslimit.Limits{}, nil, reslimitgrpc.WithResetTime(func(string) time.Time { return time.Time{} })))
		})
	}
}

func TestUnknownTenant(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{})
	_, err := f.unary(t, "", "ok")
	assert.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	_, err = f.streamCall(t, "", "ok")
	assert.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	// A TenantFunc's own status passes through.
	_, err = f.unary(t, "forbidden", "ok")
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	assert.Empty(t, f.ledger.Tenants(), "no account opened for an unknown tenant")
}

func TestNestedToolBilledToTenant(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{Timeout: 5 * time.Second})
	out, err := f.unary(t, "acme", "tool:42")
	require.NoError(t, err)
	assert.Equal(t, "acme:42", out, "the handler sees its tenant and the tool's result")
	outs, err := f.streamCall(t, "acme", "tool:8", "ops:3", "ok")
	require.NoError(t, err)
	assert.Equal(t, []string{"acme:8", "acme", "acme"}, outs)

	st := f.ledger.Account("acme").Stats()
	assert.Equal(t, int64(42+8+3), st.Operations, "tools nested in the calls billed to the tenant, exactly")
	assert.Equal(t, int64(2), st.Evaluations, "one evaluation per call, unary or stream")
	assert.Equal(t, int64(0), st.Running)
	other := f.ledger.Account("other").Stats()
	assert.Zero(t, other.Operations)
}

func TestHandlerStatusPassesThrough(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{})
	_, err := f.unary(t, "acme", "status")
	s, _ := status.FromError(err)
	assert.Equal(t, codes.NotFound, s.Code())
	assert.Equal(t, "no such thing", s.Message())
	_, err = f.streamCall(t, "acme", "ok", "status")
	s, _ = status.FromError(err)
	assert.Equal(t, codes.NotFound, s.Code())
	assert.Equal(t, "no such thing", s.Message())
	// A plain error stays the handler's (gRPC answers codes.Unknown).
	_, err = f.unary(t, "acme", "bogus")
	assert.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	assert.Equal(t, int64(3), f.ledger.Account("acme").Stats().Evaluations)
}

func TestTenantRefusalNotBilled(t *testing.T) {
	reset := time.Now().Add(time.Hour)
	f := start(t, reslimit.AccountLimits{MaxEvaluations: 1}, reslimit.Limits{},
		reslimitgrpc.WithResetTime(func(string) time.Time { return reset }))
	_, err := f.unary(t, "acme", "ops:5")
	require.NoError(t, err)
	for _, call := range []func() error{
		func() error { _, err := f.unary(t, "acme", "ops:5"); return err },
		func() error { _, err := f.streamCall(t, "acme", "ops:5"); return err },
	} {
		err := call()
		s, info, quota, retry := limitDetails(t, err)
		assert.Equal(t, codes.ResourceExhausted, s.Code(), "%v", err)
		assert.Contains(t, s.Message(), "not billed")
		assert.Equal(t, "false", info.GetMetadata()["billed"])
		assert.Equal(t, "tenant", info.GetMetadata()["scope"])
		assert.Equal(t, "acme", info.GetMetadata()["tenant"])
		assert.Equal(t, "evaluations", info.GetMetadata()["resource"])
		assert.Equal(t, "1", info.GetMetadata()["limit"])
		require.Len(t, quota.GetViolations(), 1)
		assert.Equal(t, "tenant:acme", quota.GetViolations()[0].GetSubject())
		assert.Equal(t, "evaluations", quota.GetViolations()[0].GetQuotaMetric())
		require.NotNil(t, retry, "WithResetTime gives a RetryInfo")
		d := retry.GetRetryDelay().AsDuration()
		assert.True(t, d > 59*time.Minute && d <= time.Hour, "retry delay %v", d)
	}
	st := f.ledger.Account("acme").Stats()
	assert.Equal(t, int64(1), st.Evaluations)
	assert.Equal(t, int64(5), st.Operations, "the refused calls charged nothing")
}

func TestRateRefusalRetryInfo(t *testing.T) {
	f := start(t, reslimit.AccountLimits{EvaluationsPerSecond: 0.5, EvaluationBurst: 1}, reslimit.Limits{})
	_, err := f.unary(t, "acme", "ok")
	require.NoError(t, err)
	_, err = f.unary(t, "acme", "ok")
	s, info, _, retry := limitDetails(t, err)
	assert.Equal(t, codes.ResourceExhausted, s.Code(), "%v", err)
	assert.Equal(t, "evaluation_rate", info.GetMetadata()["resource"])
	assert.Equal(t, "false", info.GetMetadata()["billed"])
	require.NotNil(t, retry, "a rate refusal carries RetryInfo")
	d := retry.GetRetryDelay().AsDuration()
	assert.True(t, d > time.Second && d <= 2*time.Second, "retry delay %v", d)
}

func TestNoRetryInfoWithoutResetTime(t *testing.T) {
	f := start(t, reslimit.AccountLimits{MaxEvaluations: 1}, reslimit.Limits{})
	_, err := f.unary(t, "acme", "ok")
	require.NoError(t, err)
	_, err = f.unary(t, "acme", "ok")
	s, _, _, retry := limitDetails(t, err)
	assert.Equal(t, codes.ResourceExhausted, s.Code())
	assert.Nil(t, retry, "no reset time known: no RetryInfo")
}

func TestRunTimeoutDeadlineExceeded(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{Timeout: 50 * time.Millisecond})
	for _, call := range []func() error{
		func() error { _, err := f.unary(t, "acme", "sleep"); return err },
		func() error { _, err := f.streamCall(t, "acme", "ok", "sleep"); return err },
	} {
		err := call()
		s, info, quota, retry := limitDetails(t, err)
		assert.Equal(t, codes.DeadlineExceeded, s.Code(), "%v", err)
		assert.Contains(t, s.Message(), "(billed")
		assert.Equal(t, "true", info.GetMetadata()["billed"])
		assert.Equal(t, "call", info.GetMetadata()["scope"])
		assert.Equal(t, "timeout", info.GetMetadata()["resource"])
		assert.Equal(t, "0.05", info.GetMetadata()["limit"])
		assert.Equal(t, "call", quota.GetViolations()[0].GetSubject())
		assert.Nil(t, retry)
	}
	assert.Equal(t, int64(2), f.ledger.Account("acme").Stats().Evaluations, "stopped calls are billed")
}

func TestRunLimitResourceExhausted(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{MaxOperations: 10})
	for _, call := range []func() error{
		func() error { _, err := f.unary(t, "acme", "ops:11"); return err },
		func() error { _, err := f.streamCall(t, "acme", "ops:4", "ops:7"); return err },
		// A tool's refusal, returned as is by the handler.
		func() error { _, err := f.unary(t, "acme", "tool:11"); return err },
	} {
		err := call()
		s, info, _, _ := limitDetails(t, err)
		assert.Equal(t, codes.ResourceExhausted, s.Code(), "%v", err)
		assert.Contains(t, s.Message(), "(billed")
		assert.Equal(t, "true", info.GetMetadata()["billed"])
		assert.Equal(t, "call", info.GetMetadata()["scope"])
		assert.Equal(t, "operations", info.GetMetadata()["resource"])
		assert.Equal(t, "10", info.GetMetadata()["limit"])
	}
	st := f.ledger.Account("acme").Stats()
	assert.Equal(t, int64(3), st.Evaluations)
	assert.Equal(t, int64(4), st.Operations, "refused requests charge nothing")
}

func TestTenantStopMidRunBilled(t *testing.T) {
	f := start(t, reslimit.AccountLimits{MaxTotalOperations: 5}, reslimit.Limits{})
	_, err := f.unary(t, "acme", "ops:6")
	s, info, quota, _ := limitDetails(t, err)
	assert.Equal(t, codes.ResourceExhausted, s.Code(), "%v", err)
	assert.Contains(t, s.Message(), "(billed")
	assert.Equal(t, "true", info.GetMetadata()["billed"])
	assert.Equal(t, "tenant", info.GetMetadata()["scope"])
	assert.Equal(t, "operations", info.GetMetadata()["resource"])
	assert.Equal(t, "tenant:acme", quota.GetViolations()[0].GetSubject())
	assert.Equal(t, int64(1), f.ledger.Account("acme").Stats().Evaluations)
}

func TestCallerCancellation(t *testing.T) {
	f := start(t, reslimit.AccountLimits{}, reslimit.Limits{})
	for _, stream := range []bool{false, true} {
		ctx, cancel := context.WithCancel(withTenant(context.Background(), "acme"))
		errc := make(chan error, 1)
		go func() {
			if stream {
				cs, err := f.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, streamMethod)
				if err == nil {
					err = cs.SendMsg(wrapperspb.String("wait"))
				}
				if err == nil {
					err = cs.RecvMsg(new(wrapperspb.StringValue))
				}
				errc <- err
				return
			}
			errc <- f.conn.Invoke(ctx, unaryMethod, wrapperspb.String("wait"), new(wrapperspb.StringValue))
		}()
		<-f.svc.started
		cancel()
		assert.Equal(t, codes.Canceled, status.Code(<-errc))
	}
	// The client gives up at once: what the server returned is seen by the
	// recorder around the interceptors.
	require.Eventually(t, func() bool { return len(f.serverErrs()) == 2 }, 5*time.Second, 5*time.Millisecond)
	for _, err := range f.serverErrs() {
		assert.Equal(t, codes.Canceled, status.Code(err), "%v", err)
	}
	require.Eventually(t, func() bool { return f.ledger.Account("acme").Stats().Running == 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, int64(2), f.ledger.Account("acme").Stats().Evaluations)
}
