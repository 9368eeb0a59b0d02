"""MTDM: the multi-task deep model (MMoE or PLE over CTR, CVR and CTCVR) in PyTorch."""
