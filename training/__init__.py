"""training layer of mtlrec (see DESIGN.md)."""
