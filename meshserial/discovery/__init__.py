"""Finding meshserial servers: mDNS on LAN and overlay links, a rendezvous service elsewhere.

``overlay`` lists and selects network interfaces (recognising ZeroTier), ``mdns`` advertises and
browses ``_meshserial._tcp`` per interface. Everything found here is a hint; the handshake proves who a
server is.
"""
