"""features layer of mtlrec (see DESIGN.md)."""
