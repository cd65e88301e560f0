"""What the agent keeps and checks about its broker: the last retained payload of
every topic it owns (republished when the broker has forgotten them), the
reconciliation of the broker's retained alerts with the ones the agent holds,
and the conformance probe ``doctor`` runs."""
