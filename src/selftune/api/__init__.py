"""HTTP: OpenAI-compatible routes, the management API, error bodies in one place."""
