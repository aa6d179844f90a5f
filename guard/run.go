package guard

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Run is the guard: it listens on cfg.GuardPort (Listen), proxies to the
// server on loopback, and serves until ctx ends. Its metrics are
// registered with reg. With Mode Off it returns nil at once.
//
// The redirect of Plan sends the server's connections to the guard; apply
// it once Run is listening (before that, connections to the server's port
// are refused, never passed on).
func Run(ctx context.Context, cfg Config, logger zerolog.Logger, reg prometheus.Registerer) error {
	if cfg.Mode == Off {
		return nil
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	g, err := New(cfg, logger, NewMetrics(reg), Options{})
	if err != nil {
		return err
	}
	ln, err := Listen(ctx, cfg.GuardPort)
	if err != nil {
		return err
	}
	g.log.Info().Str("mode", string(cfg.Mode)).Str("base_url", cfg.BaseURL).Int("port", int(cfg.GuardPort)).
		Int("server_port", int(cfg.ServerPort)).Int64("max_notebook", cfg.MaxNotebook).Bool("terminals", cfg.Terminals).
		Strs("proxy_allow", cfg.ProxyAllow).Msg("guard listening")
	return g.Serve(ctx, ln)
}
