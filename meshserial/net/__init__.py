"""asyncio adapters: TCP plumbing and the bridges between ports and protocol engines.

Everything here is thin: after each input the adapter feeds the sans-IO engine, flushes its output and
re-arms its timer. Data moves by direct calls from one callback to the next (no queue and no task
switch per chunk), which keeps the round-trip latency close to the kernel's.
"""
