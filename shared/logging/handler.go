package logging

import (
	"context"
	"log/slog"
	"slices"
)

// step is one WithAttrs or WithGroup call recorded after the first group was
// opened. Exactly one of group and attrs is set.
type step struct {
	group string
	attrs []slog.Attr
}

// nest applies recorded steps to a record's attributes and returns the
// top-level attributes that result: each group step wraps everything that
// came after it in a slog.Group. Handlers that must add fields at the top
// level of a record (the trace, which Cloud Logging only reads there) use it
// instead of the inner handler's WithGroup, which would put those fields
// inside the open group.
func nest(steps []step, attrs []slog.Attr) []slog.Attr {
	cur := attrs
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		if s.group == "" {
			cur = append(slices.Clip(s.attrs), cur...)
			continue
		}
		cur = []slog.Attr{{Key: s.group, Value: slog.GroupValue(cur...)}}
	}
	return cur
}

// recordAttrs returns r's attributes as a slice.
func recordAttrs(r slog.Record) []slog.Attr {
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	return attrs
}

// contextHandler wraps one of slog's handlers and adds top-level attributes
// derived from the record's context (the trace). Attributes given before
// any group go straight to the inner handler, which preformats them; once a
// group is open, the handler records the steps and replays them per record
// with nest, so the context's attributes stay at the top level.
type contextHandler struct {
	inner slog.Handler
	steps []step
	extra func(context.Context) []slog.Attr
}

func newContextHandler(inner slog.Handler, extra func(context.Context) []slog.Attr) *contextHandler {
	return &contextHandler{inner: inner, extra: extra}
}

// Enabled implements slog.Handler.
func (h *contextHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h *contextHandler) Handle(ctx context.Context, r slog.Record) error {
	var extra []slog.Attr
	if h.extra != nil {
		extra = h.extra(ctx)
	}
	if len(h.steps) == 0 {
		if len(extra) > 0 {
			r = r.Clone()
			r.AddAttrs(extra...)
		}
		return h.inner.Handle(ctx, r)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(extra...)
	nr.AddAttrs(nest(h.steps, recordAttrs(r))...)
	return h.inner.Handle(ctx, nr)
}

// WithAttrs implements slog.Handler.
func (h *contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	if len(h.steps) == 0 {
		h2.inner = h.inner.WithAttrs(attrs)
		return &h2
	}
	h2.steps = append(slices.Clip(h.steps), step{attrs: slices.Clone(attrs)})
	return &h2
}

// WithGroup implements slog.Handler.
func (h *contextHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.steps = append(slices.Clip(h.steps), step{group: name})
	return &h2
}

// Scope records a handler's WithAttrs and WithGroup calls, for a handler in
// another package (cloudlog's) that places a record's attributes itself.
// The zero Scope is empty.
type Scope struct{ steps []step }

// WithAttrs returns s with attrs added at its current group.
func (s Scope) WithAttrs(attrs []slog.Attr) Scope {
	if len(attrs) == 0 {
		return s
	}
	return Scope{steps: append(slices.Clip(s.steps), step{attrs: slices.Clone(attrs)})}
}

// WithGroup returns s with group name opened.
func (s Scope) WithGroup(name string) Scope {
	if name == "" {
		return s
	}
	return Scope{steps: append(slices.Clip(s.steps), step{group: name})}
}

// Attrs returns r's attributes inside s's groups, after s's attributes.
func (s Scope) Attrs(r slog.Record) []slog.Attr { return nest(s.steps, recordAttrs(r)) }
