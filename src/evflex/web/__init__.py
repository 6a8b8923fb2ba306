"""Web dashboard, driver page and access control."""
