"""The release stage: gate verdict -> trial serving -> publish, promote or roll back.

It sits above the registry (recflow/registry.py: records and their store) and serving (export
and the server), and is the only place that changes what Triton serves (docs/architecture.md).
"""
