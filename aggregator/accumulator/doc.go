// Package accumulator sums weighted float32 model updates exactly: it
// keeps integer sums in units of the smallest float32 subnormal, so the
// mean it returns is correctly rounded and does not depend on the order
// or grouping in which updates arrive (whole, streamed piece by piece, or
// merged from partial sums on other machines). That independence is what
// makes a restarted, scaled-out or streamed round bit-identical to an
// undisturbed one. The strategies (package strategy) and the scale-out
// workers and leader fold through it.
package accumulator
