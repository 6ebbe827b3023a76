"""Torch-free basics that every stage may import: settings, spool layout, unit records, SOP
classes, SEG references, UIDs, durable writes and errors. Imports nothing else of ours."""
