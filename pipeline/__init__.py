"""pipeline layer of mtlrec (see DESIGN.md)."""
