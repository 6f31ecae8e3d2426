"""The contract between the host and the jail: the only host code the jail imports.

Both sides import these modules and nothing else of each other: the names of
the channels, serials and messages (:mod:`.constants`), the exceptions whose
message is what the operator reads (:mod:`.errors`). The jail's code layer
ships this package with ``helper`` and ``tasks``, so it must stay
standard-library only and cheap to import.
"""
