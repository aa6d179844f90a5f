package tcshape

import (
	"errors"
	"fmt"
	"strings"
)

// State is the qdisc tree an interface has, as apply code read it. Only the
// root and hubwarden's objects below it are kept; qdiscs elsewhere (ingress,
// clsact) are not hubwarden's business and are not read.
type State struct {
	// RootKind and RootHandle describe the root egress qdisc; RootKind is
	// empty when the interface has none.
	RootKind   string
	RootHandle Handle
	// When the root is hubwarden's: its parameters, classes and leaves.
	Root    Root
	Classes []Class
	Leaves  []Leaf
}

// Ours reports whether the root is hubwarden's HTB.
func (s State) Ours() bool { return s.RootKind == "htb" && s.RootHandle == RootHandle }

// Default reports whether the root qdisc is one the kernel attached by
// itself: its handle is 0:. Every qdisc created through tc or netlink gets
// a non-zero handle (the kernel allocates one from 8000: when none is
// given), so handle 0: means nobody configured the root: noqueue on veth
// and virtual devices, pfifo_fast or mq on hardware, or whatever
// net.core.default_qdisc says (fq_codel, fq, ...). hubwarden replaces those.
func (s State) Default() bool { return s.RootKind == "" || s.RootHandle.Major() == 0 }

// ForeignRootError is returned when the interface's root qdisc belongs to
// someone else: hubwarden refuses to replace it.
type ForeignRootError struct {
	Interface string
	Kind      string
	Handle    Handle
}

func (e *ForeignRootError) Error() string {
	return fmt.Sprintf("interface %s has a root qdisc %s %s that is not hubwarden's (%x:) nor a kernel default (0:); remove it or shape another interface", e.Interface, e.Kind, e.Handle, RootMajor)
}

// ErrForeignRoot matches every *ForeignRootError with errors.Is.
var ErrForeignRoot = errors.New("foreign root qdisc")

// ErrNoClass means the interface has no class with the asked id (the tree
// is not applied, or was removed).
var ErrNoClass = errors.New("no such class")

// Is makes errors.Is(err, ErrForeignRoot) true.
func (e *ForeignRootError) Is(target error) bool { return target == ErrForeignRoot }

// OpKind is what an Op does.
type OpKind int

// The op kinds.
const (
	OpDeleteRoot  OpKind = iota // delete hubwarden's root (and so its tree)
	OpAddRoot                   // add the HTB root (over a kernel default)
	OpAddClass                  // add a class
	OpChangeClass               // change a class in place
	OpAddLeaf                   // add a leaf qdisc, grafted over the class's default leaf
	OpChangeLeaf                // change a leaf qdisc's parameters in place
)

var opNames = map[OpKind]string{
	OpDeleteRoot: "delete root", OpAddRoot: "add root", OpAddClass: "add class",
	OpChangeClass: "change class", OpAddLeaf: "add leaf", OpChangeLeaf: "change leaf",
}

func (k OpKind) String() string { return opNames[k] }

// Op is one change to the kernel's qdisc tree. Exactly the field its kind
// needs is set.
type Op struct {
	Kind  OpKind
	Root  Root
	Class Class
	Leaf  Leaf
}

func (o Op) String() string {
	switch o.Kind {
	case OpDeleteRoot:
		return "delete qdisc htb " + RootHandle.String() + " root"
	case OpAddRoot:
		return "add " + o.Root.String()
	case OpAddClass, OpChangeClass:
		return strings.SplitN(o.Kind.String(), " ", 2)[0] + " " + o.Class.String()
	default:
		return strings.SplitN(o.Kind.String(), " ", 2)[0] + " " + o.Leaf.String()
	}
}

// kernelClass drops what the kernel does not store, for comparison. An
// inner class (one with children) keeps the quantum and prio it was created
// with: HTB only updates them on leaves, so they are not compared.
func kernelClass(c Class, inner bool) Class {
	c.Name, c.Burst, c.Cburst = "", 0, 0
	if inner {
		c.Quantum, c.Prio = 0, 0
	}
	return c
}

// Diff returns the ops that turn the current state into the desired spec:
// none when they are equal; class changes and leaf grafts in place when
// only parameters differ; a delete and full re-add when the root itself or
// the set of classes differs (HTB has no "change" for its qdisc, which is
// why `tc qdisc replace` over an HTB root fails). A foreign root is an
// error: hubwarden never replaces another owner's qdisc.
func Diff(cur State, want Spec) ([]Op, error) {
	if !cur.Ours() && !cur.Default() {
		return nil, &ForeignRootError{Interface: want.Interface, Kind: cur.RootKind, Handle: cur.RootHandle}
	}
	full := func() []Op {
		ops := []Op{{Kind: OpAddRoot, Root: want.Root}}
		for _, c := range want.Classes {
			ops = append(ops, Op{Kind: OpAddClass, Class: c})
		}
		for _, l := range want.Leaves {
			ops = append(ops, Op{Kind: OpAddLeaf, Leaf: l})
		}
		return ops
	}
	if !cur.Ours() {
		return full(), nil
	}
	inner := map[Handle]bool{}
	for _, c := range want.Classes {
		inner[c.Parent] = true
	}
	have := map[Handle]Class{}
	for _, c := range cur.Classes {
		have[c.ID] = kernelClass(c, inner[c.ID])
	}
	sameShape := cur.Root == want.Root && len(cur.Classes) == len(want.Classes)
	for _, c := range want.Classes {
		h, ok := have[c.ID]
		if !ok || h.Parent != c.Parent {
			sameShape = false
		}
	}
	leaves := map[Handle]Leaf{}
	for _, l := range cur.Leaves {
		leaves[l.Parent] = l
	}
	for _, l := range want.Leaves {
		// A leaf with our handle but another kind cannot be changed or
		// replaced in place (the kernel insists on the same kind for the
		// same handle): rebuild.
		if h, ok := leaves[l.Parent]; ok && h.Handle == l.Handle && h.Kind != l.Kind {
			sameShape = false
		}
	}
	if !sameShape {
		return append([]Op{{Kind: OpDeleteRoot}}, full()...), nil
	}
	var ops []Op
	for _, c := range want.Classes {
		if have[c.ID] != kernelClass(c, inner[c.ID]) {
			ops = append(ops, Op{Kind: OpChangeClass, Class: c})
		}
	}
	for _, l := range want.Leaves {
		h, ok := leaves[l.Parent]
		switch {
		case !ok || h.Handle != l.Handle:
			ops = append(ops, Op{Kind: OpAddLeaf, Leaf: l})
		case h != l:
			ops = append(ops, Op{Kind: OpChangeLeaf, Leaf: l})
		}
	}
	return ops, nil
}

// CheckText returns a readable difference between the kernel state and the
// spec, empty when they agree: one line per op that Apply would run.
func CheckText(cur State, want Spec) (string, error) {
	ops, err := Diff(cur, want)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, o := range ops {
		fmt.Fprintf(&b, "%s: %s\n", want.Interface, o)
	}
	return b.String(), nil
}
