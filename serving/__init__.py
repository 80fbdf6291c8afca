"""serving layer of mtlrec (see DESIGN.md)."""
