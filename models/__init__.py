"""models layer of mtlrec (see DESIGN.md)."""
