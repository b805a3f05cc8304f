//go:build tools

// Package tools pins Jaeger (its all-in-one program, cmd/jaeger: OTLP receivers and the
// query API over in-memory storage), which the tracing tests export the waypoints' spans to.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
