"""The node's HTTP side: health probes, Prometheus metrics, the admins' status page and its
actions (Starlette, served by uvicorn in a thread of ``molsub serve``; [http] in node.toml)."""
