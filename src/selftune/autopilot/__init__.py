"""The autopilot: triggers that queue training, the troubleshooter that repairs it, and the
controls that switch them (docs/autopilot.md). It runs in the worker; the server only reads
and changes its settings."""
