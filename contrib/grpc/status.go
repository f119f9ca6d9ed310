package reslimitgrpc

import (
	"context"
	"errors"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

// Domain is the ErrorInfo.Domain of the errdetails.ErrorInfo detail that
// the interceptors attach to every status they make for a limit.
const Domain = "github.com/reslimit/reslimit"

// ReasonLimitExceeded is the ErrorInfo.Reason of that detail.
const ReasonLimitExceeded = "LIMIT_EXCEEDED"

// status returns the status the client of a call of tenant gets for err,
// the error of the call's run (started: whether the run started, and so
// was billed as an evaluation).
//
//   - a *reslimit.LimitError: codes.DeadlineExceeded for the call's own
//     timeout, codes.ResourceExhausted for any other limit (the call's or
//     its tenant's), with the details the package documentation lists;
//   - the caller's cancellation: codes.Canceled (codes.DeadlineExceeded
//     for its deadline);
//   - reslimit.ErrClosed (a closed ledger): codes.Unavailable;
//   - anything else: codes.Internal, with no description.
func (ic *interceptor) status(tenant string, err error, started bool) *status.Status {
	var le *reslimit.LimitError
	switch {
	case errors.As(err, &le):
		return ic.limitStatus(le, started)
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "reslimitgrpc: the call was cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "reslimitgrpc: the call's deadline passed")
	case errors.Is(err, reslimit.ErrClosed):
		return status.New(codes.Unavailable, "reslimitgrpc: the ledger is closed")
	}
	return status.New(codes.Internal, "reslimitgrpc: internal error")
}

func (ic *interceptor) limitStatus(le *reslimit.LimitError, started bool) *status.Status {
	code := codes.ResourceExhausted
	scope := "tenant"
	if le.Tenant == "" {
		scope = "call"
		if le.Resource == reslimit.Timeout {
			code = codes.DeadlineExceeded
		}
	}
	msg := le.Error()
	if started {
		msg += " (billed: the call ran and was stopped)"
	} else {
		msg += " (not billed: the call was refused before it ran)"
	}
	r := le.Resource
	subject := "call"
	if le.Tenant != "" {
		subject = "tenant:" + le.Tenant
	}
	info := &errdetails.ErrorInfo{
		Reason: ReasonLimitExceeded,
		Domain: Domain,
		Metadata: map[string]string{
			"scope":     scope,
			"resource":  r.String(),
			"unit":      resinfo.Unit(r),
			"limit":     formatFloat(resinfo.BaseValue(r, le.Limit)),
			"used":      formatFloat(resinfo.BaseValue(r, le.Used)),
			"requested": formatFloat(resinfo.BaseValue(r, le.Requested)),
			"billed":    strconv.FormatBool(started),
		},
	}
	if le.Tenant != "" {
		info.Metadata["tenant"] = le.Tenant
	}
	details := []protoadapt.MessageV1{
		info,
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
			Subject:     subject,
			Description: le.Error(),
			QuotaMetric: r.String(),
		}}},
	}
	if d, ok := ic.retryAfter(le); ok {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	}
	s := status.New(code, msg)
	if ds, err := s.WithDetails(details...); err == nil {
		s = ds
	}
	return s
}

// retryAfter returns how long the client should wait before retrying
// after le: for a refusal by one of the tenant's rates, its RetryAfter;
// for one of its cumulative limits, the time until its quota resets, when
// WithResetTime knows it.
func (ic *interceptor) retryAfter(le *reslimit.LimitError) (time.Duration, bool) {
	if le.Tenant == "" {
		return 0, false
	}
	if resinfo.Rate(le.Resource) {
		return le.RetryAfter, le.RetryAfter > 0
	}
	if ic.cfg.reset == nil || resinfo.Held(le.Resource) {
		return 0, false
	}
	at := ic.cfg.reset(le.Tenant)
	if at.IsZero() {
		return 0, false
	}
	d := time.Until(at)
	return d, d > 0
}

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
