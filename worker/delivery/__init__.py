"""Results out: record them durably (store), then send them to every destination (send, targets)."""
