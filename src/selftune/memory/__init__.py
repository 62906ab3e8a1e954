"""Memory: what selftune remembers between conversations, found again by meaning."""
