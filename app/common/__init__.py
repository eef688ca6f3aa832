"""What every other package shares: errors (app.common.errors), the validated run and node configuration
(config), structlog logging (telemetry), the Prometheus metric definitions (metrics), W&B tracking (tracking) and
atomic file writes (files). Imports nothing from app's other packages."""
