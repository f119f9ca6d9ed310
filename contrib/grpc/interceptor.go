// Package reslimitgrpc runs every gRPC call as one evaluation of its
// tenant's reslimit.Account, as reslimithttp.Middleware does for HTTP
// requests, and answers the calls that a limit refused or stopped with
// the matching gRPC status.
//
//	unary, err := reslimitgrpc.UnaryServerInterceptor(ledger, tenantFromMetadata, reslimit.Limits{Timeout: 2 * time.Second})
//	if err != nil { ... }
//	stream, err := reslimitgrpc.StreamServerInterceptor(ledger, tenantFromMetadata, reslimit.Limits{Timeout: time.Minute})
//	if err != nil { ... }
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream))
//
// The client gets:
//
//   - codes.Unauthenticated when the TenantFunc fails or names no tenant;
//   - codes.ResourceExhausted when the tenant's account refuses the call
//     before it runs (exhausted, at its MaxEvaluations or MaxConcurrent,
//     above its EvaluationsPerSecond), with a RetryInfo detail for a rate
//     refusal (from LimitError.RetryAfter) or, with WithResetTime, for a
//     cumulative limit; such a call was not billed;
//   - codes.DeadlineExceeded when the call's own limits.Timeout stopped it,
//     and codes.ResourceExhausted when another limit of the call (CPU
//     time, operations, memory, ...) or of its tenant stopped it; such a
//     call ran and was billed;
//   - codes.Canceled when the caller cancelled the call;
//   - the handler's own status error, unchanged.
//
// Every status made for a limit says in its message whether the call was
// billed, and carries an errdetails.ErrorInfo (Reason
// ReasonLimitExceeded, Domain Domain, Metadata "scope" ("tenant" or
// "call"), "resource", "unit", "limit", "used", "requested" in the unit,
// "billed" ("true" or "false") and, for a limit of the tenant, "tenant")
// and an errdetails.QuotaFailure
// naming the resource, besides the RetryInfo above.
package reslimitgrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/reslimit/reslimit"
)

// TenantFunc names the tenant of a call from its incoming context (where
// metadata.FromIncomingContext finds the call's metadata) and its full
// method name ("/package.Service/Method"). An error, or an empty name,
// refuses the call with codes.Unauthenticated; an error that carries a
// gRPC status (one made by status.Error) is returned to the client as it
// is instead, so that a TenantFunc can answer codes.PermissionDenied. A
// TenantFunc must be safe for concurrent use.
type TenantFunc = func(ctx context.Context, fullMethod string) (string, error)

// Option configures UnaryServerInterceptor and StreamServerInterceptor.
type Option func(*config)

type config struct {
	reset func(tenant string) time.Time
	err   error // the first invalid option
}

func (c *config) setErr(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithResetTime tells the interceptors when a tenant's cumulative quota
// resets (for example when a job calls Account.Reset at the start of each
// billing period). When it returns a time after now, a call refused or
// stopped by one of the tenant's cumulative limits (evaluations,
// operations, CPU time, total memory, function calls) carries a RetryInfo
// detail with the time until then. A zero time means "unknown": no
// RetryInfo. fn must be safe for concurrent use; a nil fn is invalid.
func WithResetTime(fn func(tenant string) time.Time) Option {
	return func(c *config) {
		if fn == nil {
			c.setErr(fmt.Errorf("%w: reslimitgrpc.WithResetTime(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.reset = fn
	}
}

// interceptor is what both interceptors share.
type interceptor struct {
	ledger *reslimit.Ledger
	tenant TenantFunc
	limits reslimit.Limits
	cfg    config
}

func newInterceptor(kind string, ledger *reslimit.Ledger, tenant TenantFunc, limits reslimit.Limits, opts []Option) (*interceptor, error) {
	switch {
	case ledger == nil:
		return nil, fmt.Errorf("%w: reslimitgrpc.%s with a nil ledger", reslimit.ErrInvalidArgument, kind)
	case tenant == nil:
		return nil, fmt.Errorf("%w: reslimitgrpc.%s with a nil tenant function", reslimit.ErrInvalidArgument, kind)
	}
	if err := limits.Validate(); err != nil {
		return nil, fmt.Errorf("reslimitgrpc.%s: %w", kind, err)
	}
	ic := &interceptor{ledger: ledger, tenant: tenant, limits: limits}
	for _, o := range opts {
		if o != nil {
			o(&ic.cfg)
		}
	}
	if ic.cfg.err != nil {
		return nil, ic.cfg.err
	}
	return ic, nil
}

// UnaryServerInterceptor returns a gRPC unary server interceptor that runs
// every call as one evaluation of its tenant's Account in ledger, bounded
// per call by limits. It is safe for concurrent use.
//
// For each call it asks tenant for the tenant's name, takes the tenant's
// account (ledger.Account) and calls the handler inside reslimit.Run with
// reslimit.WithAccount, so that:
//
//   - the handler's context is the run's: reslimit.FromContext(ctx)
//     returns the call's *reslimit.Tracker and Tenant(ctx) the tenant, and
//     a tool wrapped with reslimit.Limit and called with ctx is a nested
//     run, billed once, to the tenant;
//   - that context is cancelled, with the *reslimit.LimitError as
//     context.Cause, when limits.Timeout passes or the CPU time (the
//     call's or the tenant's) is used up.
//
// Run locks the handler's goroutine to its OS thread while it runs, so
// that its CPU time can be counted: calls that block for long hold a
// thread each. Bound them with AccountLimits.MaxConcurrent.
//
// The call's error is the handler's, except that a refusal or a stop by a
// limit, an unknown tenant and the caller's cancellation become the
// status Status describes. A handler that returns an error a tracker
// method returned (a *reslimit.LimitError) needs no conversion; a
// handler's own status error is returned unchanged.
//
// A nil ledger or tenant function, invalid limits or an invalid option
// value are reported here, when the interceptor is built (an error
// wrapping reslimit.ErrInvalidArgument or reslimit.ErrInvalidLimits), not
// on every call.
func UnaryServerInterceptor(ledger *reslimit.Ledger, tenant func(ctx context.Context, fullMethod string) (string, error), limits reslimit.Limits, opts ...Option) (grpc.UnaryServerInterceptor, error) {
	ic, err := newInterceptor("UnaryServerInterceptor", ledger, tenant, limits, opts)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var resp any
		err := ic.serve(ctx, info.FullMethod, func(ctx context.Context) error {
			var err error
			resp, err = handler(ctx, req)
			return err
		})
		if err != nil {
			return nil, err
		}
		return resp, nil
	}, nil
}

// StreamServerInterceptor returns a gRPC stream server interceptor that
// runs every streaming call, from its start until its handler returns, as
// one evaluation of its tenant's Account in ledger, bounded by limits
// (limits.Timeout bounds the whole stream). Everything
// UnaryServerInterceptor says holds for it, with the stream's Context in
// place of the handler's ctx: it is the run's context.
//
// A stream held open for long holds its OS thread, and one of its
// tenant's AccountLimits.MaxConcurrent places, all that time.
func StreamServerInterceptor(ledger *reslimit.Ledger, tenant func(ctx context.Context, fullMethod string) (string, error), limits reslimit.Limits, opts ...Option) (grpc.StreamServerInterceptor, error) {
	ic, err := newInterceptor("StreamServerInterceptor", ledger, tenant, limits, opts)
	if err != nil {
		return nil, err
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return ic.serve(ss.Context(), info.FullMethod, func(ctx context.Context) error {
			return handler(srv, &serverStream{ServerStream: ss, ctx: ctx})
		})
	}, nil
}

// serverStream is a grpc.ServerStream whose Context is the run's.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context returns the run's context.
func (s *serverStream) Context() context.Context { return s.ctx }

type tenantKey struct{}

// Tenant returns the tenant of a call served by the interceptors, from
// the handler's context (or any context derived from it), or "" when ctx
// is not one.
func Tenant(ctx context.Context) string {
	if ctx == nil {
		return ""
	}
	name, _ := ctx.Value(tenantKey{}).(string)
	return name
}

// serve runs call as one evaluation of the tenant of the call whose
// context is ctx, and returns the call's error as the client must get it.
func (ic *interceptor) serve(ctx context.Context, method string, call func(ctx context.Context) error) error {
	name, err := ic.tenant(ctx, method)
	if err == nil && name == "" {
		err = errors.New("empty tenant name")
	}
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != 0 {
			return err
		}
		return unknownTenant.Err()
	}
	acct := ic.ledger.Account(name)
	if err := acct.Err(); err != nil {
		return ic.status(name, err, false).Err()
	}
	var callErr error
	started := false
	_, err = reslimit.Run(context.WithValue(ctx, tenantKey{}, name), ic.limits, func(ctx context.Context) error {
		started = true
		callErr = call(ctx)
		return callErr
	}, reslimit.WithAccount(acct))
	if err == nil {
		return nil
	}
	if started && err == callErr {
		// The handler's own answer, unless it is a limit's error, or the
		// caller went away and the handler did not say more.
		if _, ok := status.FromError(err); ok {
			return err
		}
		if !errors.Is(err, reslimit.ErrLimitExceeded) && ctx.Err() == nil {
			return err
		}
	}
	return ic.status(name, err, started).Err()
}

var unknownTenant = status.New(codes.Unauthenticated, "reslimitgrpc: unknown tenant")
