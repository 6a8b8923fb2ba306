"""The eMSP role's modules: tokens and commands out, partners' objects in."""
