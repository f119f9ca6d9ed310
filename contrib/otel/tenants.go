package reslimitotel

import (
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/reslimit/reslimit"
)

// exporter is the state of one Register: its instruments (by table row of
// metrics.go) and the tenants that have series of their own.
type exporter struct {
	ledger *reslimit.Ledger
	cfg    config

	usage, limit, remaining []instrument // by usageResources
	byResource              []instrument // by byResource
	perTenant               []instrument // by perTenant
	perMonitor              []instrument // by perMonitor, with WithMonitor
	tenants, overflow       instrument

	mu    sync.Mutex          // guards known; taken only by the callback
	known map[string]struct{} // the tenants with series of their own
}

// labels returns the tenants of snap in name order, and the AttrTenant
// value of each tenant that gets series of its own (the others are summed
// into the other tenant). A value is valid UTF-8 whatever the name: a name
// that is not gets its invalid bytes replaced by U+FFFD, unless that value
// is taken (by a valid name, the other tenant, or an invalid name before
// it in name order); then it is summed into the other tenant.
func (e *exporter) labels(snap map[string]reslimit.AccountStats) ([]string, map[string]string) {
	names := make([]string, 0, len(snap))
	for name := range snap {
		names = append(names, name)
	}
	sort.Strings(names)
	own := e.choose(names)
	taken := make(map[string]struct{}, len(own)+1)
	if e.cfg.other != "" {
		taken[e.cfg.other] = struct{}{}
	}
	for name := range own {
		if utf8.ValidString(name) {
			taken[name] = struct{}{}
		}
	}
	labels := make(map[string]string, len(own))
	for _, name := range names {
		if _, ok := own[name]; !ok {
			continue
		}
		if utf8.ValidString(name) {
			labels[name] = name
			continue
		}
		label := strings.ToValidUTF8(name, "\uFFFD")
		if _, dup := taken[label]; !dup {
			taken[label] = struct{}{}
			labels[name] = label
		}
	}
	return names, labels
}

// choose returns the tenants (of the sorted names) that get series of their
// own: the ones already known that still exist and are allowed, then new
// allowed ones in name order, up to the cap. So a tenant keeps its series
// from one collection to the next while it exists.
func (e *exporter) choose(names []string) map[string]struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	present := make(map[string]struct{}, len(names))
	for _, n := range names {
		present[n] = struct{}{}
	}
	for k := range e.known {
		if _, ok := present[k]; !ok || !e.allowed(k) {
			delete(e.known, k)
		}
	}
	for _, n := range names {
		if e.cfg.max > 0 && len(e.known) >= e.cfg.max {
			break
		}
		if e.allowed(n) {
			e.known[n] = struct{}{}
		}
	}
	own := make(map[string]struct{}, len(e.known))
	for k := range e.known {
		own[k] = struct{}{}
	}
	return own
}

func (e *exporter) allowed(tenant string) bool {
	if e.cfg.other != "" && tenant == e.cfg.other {
		return false
	}
	return e.cfg.allow == nil || e.cfg.allow(tenant)
}
