"""The CPO role's modules: what the CSMS knows, as OCPI objects for eMSPs."""
