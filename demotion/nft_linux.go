//go:build linux

package demotion

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// nftObjectQuota is NFT_OBJECT_QUOTA, the type of a quota object reference.
const nftObjectQuota = 2

// NFT is the quota gate's kernel side: nftables in one network namespace.
// Its methods are safe for concurrent use.
type NFT struct {
	mu   sync.Mutex
	conn *nftables.Conn
}

// OpenNFT opens an nftables connection in the network namespace netnsFD (0:
// the calling thread's).
func OpenNFT(netnsFD int) (*NFT, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return &NFT{conn: c}, nil
}

// Close closes the connection; the kernel objects stay.
func (n *NFT) Close() error { return n.conn.CloseLasting() }

var nftTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: NFTTable}

func nftChain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     NFTChain,
		Table:    nftTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityRef(NFTPriority),
		Policy:   &accept,
	}
}

func nftQuota(limit uint64) *nftables.QuotaObj {
	return &nftables.QuotaObj{Table: nftTable, Name: NFTQuota, Bytes: limit, Over: true}
}

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

// exprs returns the gate rule's expressions, as the kernel lists them back.
func (g QuotaGate) exprs() []expr.Any {
	le := binaryutil.NativeEndian.PutUint32
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(g.Interface)},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: le(g.Match()), Xor: le(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: le(0)},
		&expr.Objref{Type: nftObjectQuota, Name: NFTQuota},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: le(^g.Set()), Xor: le(g.Set())},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// listed returns exprs as google/nftables decodes them from the kernel's
// listing: its Ct decoder reads the destination register but not the
// source register of a "ct set", so a set reads back as a Ct with neither.
func listed(exprs []expr.Any) []expr.Any {
	out := make([]expr.Any, len(exprs))
	for i, e := range exprs {
		if ct, ok := e.(*expr.Ct); ok && ct.SourceRegister {
			e = &expr.Ct{Key: ct.Key, Direction: ct.Direction}
		}
		out[i] = e
	}
	return out
}

func (g QuotaGate) rule() *nftables.Rule {
	return &nftables.Rule{
		Table:    nftTable,
		Chain:    nftChain(),
		Exprs:    g.exprs(),
		UserData: userdata.AppendString(nil, userdata.TypeComment, g.Comment()),
	}
}

func notExist(err error) bool { return errors.Is(err, unix.ENOENT) }

// state reads what of the gate exists: the table, the quota, the chain and
// its rules.
type nftState struct {
	table, quota bool
	chain        *nftables.Chain
	rules        []*nftables.Rule
}

func (n *NFT) read() (nftState, error) {
	var s nftState
	if _, err := n.conn.ListTableOfFamily(NFTTable, nftables.TableFamilyINet); err != nil {
		if notExist(err) {
			return s, nil
		}
		return s, fmt.Errorf("listing nftables table inet %s: %w", NFTTable, err)
	}
	s.table = true
	objs, err := n.conn.GetObj(nftQuota(0))
	switch {
	case err == nil:
		s.quota = len(objs) > 0
	case notExist(err):
	default:
		return s, fmt.Errorf("reading nftables quota %s: %w", NFTQuota, err)
	}
	ch, err := n.conn.ListChain(nftTable, NFTChain)
	switch {
	case err == nil:
		s.chain = ch
		if s.rules, err = n.conn.GetRules(nftTable, ch); err != nil {
			return s, fmt.Errorf("listing the rules of nftables chain %s: %w", NFTChain, err)
		}
	case notExist(err):
	default:
		return s, fmt.Errorf("listing nftables chain %s: %w", NFTChain, err)
	}
	return s, nil
}

// chainDiff says how the chain differs from the plan ("" when it matches).
func chainDiff(s nftState, g QuotaGate) string {
	want := nftChain()
	switch {
	case s.chain == nil:
		return "chain " + NFTChain + " missing"
	case s.chain.Type != want.Type || s.chain.Hooknum == nil || *s.chain.Hooknum != *want.Hooknum ||
		s.chain.Priority == nil || *s.chain.Priority != *want.Priority:
		return "chain " + NFTChain + " has another type, hook or priority"
	case len(s.rules) != 1:
		return fmt.Sprintf("chain %s has %d rules, want 1", NFTChain, len(s.rules))
	}
	if d := cmp.Diff(listed(g.exprs()), s.rules[0].Exprs); d != "" {
		return "the gate rule differs (-want +got):\n" + d
	}
	return ""
}

// Check compares the kernel with the plan, read-only: "" when the table,
// the quota, the chain and its one rule are as planned. The quota's limit
// and use are state, not compared.
func (n *NFT) Check(g QuotaGate) (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := n.read()
	if err != nil {
		return "", err
	}
	var d []string
	if !s.table {
		return "nftables table inet " + NFTTable + " missing\n", nil
	}
	if !s.quota {
		d = append(d, "quota "+NFTQuota+" missing")
	}
	if cd := chainDiff(s, g); cd != "" {
		d = append(d, cd)
	}
	if len(d) == 0 {
		return "", nil
	}
	return "nftables table inet " + NFTTable + ": " + strings.Join(d, "; ") + "\n", nil
}

// Apply makes the kernel hold the gate, in one nftables transaction, and
// reports whether it changed anything. An existing quota is never touched
// (its limit and use are the pod bucket: a restart or a re-apply must not
// refill it); a missing one is created with the limit level (bytes the pod
// may still send fast). The chain is replaced when it differs.
func (n *NFT) Apply(g QuotaGate, level uint64) (bool, error) {
	if err := g.Validate(); err != nil {
		return false, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := n.read()
	if err != nil {
		return false, err
	}
	changed := false
	if !s.table {
		n.conn.AddTable(nftTable)
		changed = true
	}
	if !s.quota {
		n.conn.AddObj(nftQuota(level))
		changed = true
	}
	if chainDiff(s, g) != "" {
		if s.chain != nil {
			n.conn.DelChain(s.chain)
		}
		n.conn.AddChain(nftChain())
		n.conn.AddRule(g.rule())
		changed = true
	}
	if !changed {
		return false, nil
	}
	if err := n.conn.Flush(); err != nil {
		return false, fmt.Errorf("applying nftables table inet %s: %w", NFTTable, err)
	}
	return true, nil
}

// Remove deletes the gate's table (a configuration without the quota gate).
func (n *NFT) Remove() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := n.read()
	if err != nil || !s.table {
		return err
	}
	n.conn.DelTable(nftTable)
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("removing nftables table inet %s: %w", NFTTable, err)
	}
	return nil
}

// Quota returns the quota's limit and what it has counted: the pod bucket
// holds limit-consumed bytes (negative: in debt).
func (n *NFT) Quota() (limit, consumed uint64, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	objs, err := n.conn.GetObj(nftQuota(0))
	if err != nil {
		return 0, 0, fmt.Errorf("reading nftables quota %s: %w", NFTQuota, err)
	}
	for _, o := range objs {
		if q, ok := o.(*nftables.QuotaObj); ok && q.Name == NFTQuota {
			return q.Bytes, q.Consumed, nil
		}
	}
	return 0, 0, fmt.Errorf("reading nftables quota %s: %w", NFTQuota, unix.ENOENT)
}

// SetLimit sets the quota's limit; what it has counted is kept (the kernel
// updates a quota object in place).
func (n *NFT) SetLimit(limit uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.conn.AddObj(nftQuota(limit))
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("setting nftables quota %s to %d bytes: %w", NFTQuota, limit, err)
	}
	return nil
}

// Probe checks that the kernel has what the quota gate needs: nftables, an
// inet table, quota objects and their update in place (Linux 5.4). It
// creates and deletes a table of its own.
func (n *NFT) Probe() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: NFTTable + "-probe"}
	q := func(limit uint64) *nftables.QuotaObj {
		return &nftables.QuotaObj{Table: t, Name: "probe", Bytes: limit, Over: true}
	}
	defer func() {
		n.conn.DelTable(t)
		_ = n.conn.Flush()
	}()
	n.conn.AddTable(t)
	n.conn.AddObj(q(1000))
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("creating an nftables quota: %w", err)
	}
	n.conn.AddObj(q(2000))
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("updating an nftables quota: %w", err)
	}
	objs, err := n.conn.GetObj(q(0))
	if err != nil {
		return fmt.Errorf("reading an nftables quota: %w", err)
	}
	for _, o := range objs {
		if qo, ok := o.(*nftables.QuotaObj); ok && qo.Bytes == 2000 {
			return nil
		}
	}
	return errors.New("the kernel does not update nftables quota objects in place (Linux 5.4 does)")
}
