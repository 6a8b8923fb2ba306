"""evflex: smart and bidirectional (V2X) EV charging platform."""

__version__ = "0.1.0"
