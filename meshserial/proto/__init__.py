"""Sans-IO protocol engines: bytes in, events and bytes out.

Nothing in this package touches sockets, files, serial ports, threads or clocks; time is passed in as
``now`` (seconds, any monotonic origin) by the caller.
"""
