"""Model kinds behind one protocol (`base.ModelKind`) and the registry that lists them."""
