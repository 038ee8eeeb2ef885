"""Transform passes: they rewrite graph nodes and are recorded in the graph's history."""
