"""Local byte endpoints that stand for a serial line: real devices, PTYs, simulated devices."""
