"""The node's receiving side: C-STORE SCP, durable spool, study completion, dispatch."""
