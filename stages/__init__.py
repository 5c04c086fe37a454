"""Pipeline stages: one module per stage, each a transformation over one task's rows, no Ray calls."""
