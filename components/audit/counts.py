"""The file of the audit's counts, named apart from the audit's code: the model card and `ffx evaluate` read it
without depending on how the audit finds what it counts."""

AUDIT_FILE = "audit.json"  # in metrics.dir: the counts per kind of finding, a DVC metric
