"""Named, configured recipes that reproduce the reference results (DESIGN.md section 6)."""
