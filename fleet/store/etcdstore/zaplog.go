package etcdstore

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLogger returns a zap logger (what the etcd client logs to) that hands
// warnings and errors to log at debug level: the store reports what matters
// itself (Open's retries, broken watches), and the client's own lines help
// when debugging.
func zapLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&zapCore{log: log})
}

// zapCore is a zapcore.Core writing to a slog.Logger.
type zapCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c *zapCore) Enabled(l zapcore.Level) bool {
	return l >= zapcore.WarnLevel && c.log.Enabled(context.Background(), slog.LevelDebug)
}

func (c *zapCore) With(fields []zapcore.Field) zapcore.Core {
	return &zapCore{log: c.log, fields: append(append([]zapcore.Field{}, c.fields...), fields...)}
}

func (c *zapCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *zapCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields)+2)
	attrs = append(attrs, "etcd_level", e.Level.String())
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	c.log.Debug("etcd client: "+e.Message, attrs...)
	return nil
}

func (c *zapCore) Sync() error { return nil }
