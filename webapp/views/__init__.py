"""Views: what a page lays out, and the wording, tables and drawings they share."""
