"""The contract between the host and the jail: the only host code the jail imports.

Both sides import these modules and nothing else of each other: the rules
the host hands the jail (:mod:`.rules`), the progress and result lines the
jail sends back (:mod:`.messages`), their one JSON serialisation
(:mod:`.codec`), the names of the channels, serials and message types and the
limits on what the jail sends (:mod:`.constants`), the exceptions whose
message is what the operator reads (:mod:`.errors`). The jail's code layer
ships this package with ``helper`` and ``tasks``, so it must stay
standard-library only and cheap to import.
"""
