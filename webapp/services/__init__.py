"""Process-wide services: one per server process, shared by every session."""
