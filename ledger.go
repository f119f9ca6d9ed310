package reslimit

import (
	"fmt"
	"sort"
	"sync"
)

// LedgerOption configures NewLedger.
type LedgerOption func(*Ledger)

// WithTenantLimits makes the ledger create each tenant's account with the
// limits f returns for it (its plan, say) instead of the defaults. f is
// called once per tenant, when its account is created; invalid limits give
// the tenant an account that refuses every run with the error (see
// Ledger.Account).
func WithTenantLimits(f func(tenant string) AccountLimits) LedgerOption {
	return func(l *Ledger) { l.limitsFor = f }
}

// WithAccountOptions applies opts to every account the ledger creates.
func WithAccountOptions(opts ...AccountOption) LedgerOption {
	return func(l *Ledger) { l.acctOpts = append(l.acctOpts, opts...) }
}

// Ledger keeps one Account per tenant, created on first use with the
// ledger's default limits. It is safe for concurrent use. The zero Ledger
// is a ledger whose accounts have no limits and no Store, as
// NewLedger(AccountLimits{}) returns.
type Ledger struct {
	defaults  AccountLimits
	acctOpts  []AccountOption
	limitsFor func(string) AccountLimits
	// optErr is the first invalid option's error and storeOpt the first
	// option that needs a store: NewLedger refuses them, so a ledger in use
	// has neither.
	optErr   error
	storeOpt string
	fleet    fleet // the store-backed part (fleet.go); zero without WithStore
	periods  ledgerPeriods

	// mu guards accts, and periods.number, periods.removed and
	// fleet.retired, which live with the rest of their state.
	mu    sync.RWMutex
	accts map[string]*Account
}

// NewLedger returns a ledger whose accounts start with the limits
// defaults (or, with WithTenantLimits, the tenant's own). Invalid defaults
// or options are reported here, as an error wrapping ErrInvalidLimits or
// ErrInvalidArgument, and no ledger is returned.
func NewLedger(defaults AccountLimits, opts ...LedgerOption) (*Ledger, error) {
	if err := defaults.Validate(); err != nil {
		return nil, err
	}
	l := &Ledger{defaults: defaults, accts: make(map[string]*Account)}
	for _, o := range opts {
		if o != nil {
			o(l)
		}
	}
	if l.optErr == nil && l.storeOpt != "" && l.fleet.store == nil {
		l.optErr = fmt.Errorf("%w: %s needs WithStore", ErrInvalidArgument, l.storeOpt)
	}
	if l.optErr == nil {
		// Account options are checked once here, not at every account.
		var cfg accountConfig
		for _, o := range l.acctOpts {
			if o != nil {
				o(&cfg)
			}
		}
		l.optErr = cfg.err
	}
	if l.optErr != nil {
		return nil, l.optErr
	}
	// The hook's delivery first: the syncer and the schedule queue closes
	// for it as soon as they run.
	l.startHooks()
	if l.fleet.store != nil {
		l.startFleet()
	}
	l.startPeriods()
	return l, nil
}

// open returns the tenant's account, creating it if needed. It fails for an
// empty tenant name or invalid limits for the tenant.
func (l *Ledger) open(tenant string) (*Account, error) {
	if tenant == "" {
		return nil, fmt.Errorf("%w: empty tenant name", ErrInvalidArgument)
	}
	l.mu.RLock()
	a := l.accts[tenant]
	l.mu.RUnlock()
	if a != nil {
		l.openFleet(a)
		return a, nil
	}
	limits := l.defaults
	if l.limitsFor != nil {
		limits = l.limitsFor(tenant) // outside the lock: it may use the ledger
	}
	l.mu.Lock()
	a, err := l.openLocked(tenant, limits)
	l.mu.Unlock()
	if a != nil {
		l.openFleet(a) // loads a store-backed tenant's totals, once
	}
	return a, err
}

func (l *Ledger) openLocked(tenant string, limits AccountLimits) (*Account, error) {
	if a := l.accts[tenant]; a != nil {
		return a, nil
	}
	if l.accts == nil {
		l.accts = make(map[string]*Account) // a zero Ledger
	}
	for i, r := range l.fleet.retired {
		if r.name == tenant {
			// Removed but not yet fully reported: bring it back, so that one
			// account per tenant reports for this replica.
			r.lock()
			r.fleetState().retired = false
			r.unlock()
			l.fleet.retired = append(l.fleet.retired[:i], l.fleet.retired[i+1:]...)
			l.accts[tenant] = r
			return r, nil
		}
	}
	a, err := NewAccount(tenant, limits, l.acctOpts...)
	if err != nil {
		return nil, err
	}
	if l.fleet.store != nil {
		f := newFleetState(l, a)
		a.quota = f
		if !l.fleet.localRates {
			a.mu.rates = accountRates{fleet: f}
			a.mu.rates.setLocked(limits)
		}
	}
	a.mu.periodNo = l.periods.open()
	a.schedule = l.periods.next
	l.accts[tenant] = a
	return a, nil
}

// Account returns the tenant's account, creating it with the default
// limits (or the tenant's, see WithTenantLimits) if needed. It never
// returns nil: a tenant that cannot be opened (an empty name, invalid
// limits for its plan or as the ledger's defaults) gets an account that
// refuses every run with an error saying why (Account.Err), so that a mistake in
// configuration or input never lets work run unbilled. Such an account
// is not kept by the ledger and reads as empty.
func (l *Ledger) Account(tenant string) *Account {
	a, err := l.open(tenant)
	if err != nil {
		return refusingAccount(tenant, err)
	}
	return a
}

// refusingAccount returns an account named name that refuses every run
// with err.
func refusingAccount(name string, err error) *Account {
	a := &Account{name: name, err: fmt.Errorf("reslimit: account %q refuses every run: %w", name, err)}
	a.mu.live = make(map[*Tracker]struct{})
	return a
}

// Err returns why the account refuses every run (see Ledger.Account), or
// nil for an account that can run work.
func (a *Account) Err() error {
	if a == nil {
		return errNilAccount
	}
	return a.err
}

// Lookup returns the tenant's account if it exists, without creating it.
func (l *Ledger) Lookup(tenant string) (*Account, bool) {
	l.mu.RLock()
	a, ok := l.accts[tenant]
	l.mu.RUnlock()
	return a, ok
}

// Remove forgets the tenant's account. Runs already begun on it finish on
// the removed account; the next Account call creates a fresh one. With a
// Store, the removed account is still synced until everything it used has
// been reported, so removing a tenant loses no billing; without one, once
// the ledger closes periods (it has a schedule, or ClosePeriod was called
// once), the next close still bills it.
func (l *Ledger) Remove(tenant string) {
	l.mu.Lock()
	if a := l.accts[tenant]; a != nil {
		a.mu.Lock()
		f := a.fleetState()
		if f != nil {
			f.retired = true
		}
		a.mu.Unlock()
		if f != nil {
			// Synced until everything it used has been reported.
			l.fleet.retired = append(l.fleet.retired, a)
		} else if l.periods.next != nil || l.periods.number > 0 {
			// The ledger closes periods: bill it at the next close.
			l.periods.removed = append(l.periods.removed, a)
		}
	}
	delete(l.accts, tenant)
	l.mu.Unlock()
}

// appendAccounts appends the ledger's accounts to dst.
func (l *Ledger) appendAccounts(dst []*Account) []*Account {
	l.mu.RLock()
	for _, a := range l.accts {
		dst = append(dst, a)
	}
	l.mu.RUnlock()
	return dst
}

// Tenants returns the tenants with an account, sorted.
func (l *Ledger) Tenants() []string {
	l.mu.RLock()
	out := make([]string, 0, len(l.accts))
	for t := range l.accts {
		out = append(out, t)
	}
	l.mu.RUnlock()
	sort.Strings(out)
	return out
}

// Snapshot returns the stats of every account, by tenant. It holds the
// ledger's lock only to list the accounts.
func (l *Ledger) Snapshot() map[string]AccountStats {
	l.mu.RLock()
	accts := make([]*Account, 0, len(l.accts))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	l.mu.RUnlock()
	out := make(map[string]AccountStats, len(accts))
	for _, a := range accts {
		out[a.name] = a.Stats()
	}
	return out
}
