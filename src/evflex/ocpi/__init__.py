"""OCPI 2.2.1 roaming: this node as CPO and eMSP (docs/ocpi.md)."""
