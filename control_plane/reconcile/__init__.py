"""The reconcile loop and what it writes: allocation records, routing states, statuses, events and change notification."""
