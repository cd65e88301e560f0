"""Alarm handling (SPEC section 4): acknowledgement, maintenance windows,
flapping, escalation over the hall / branch / city levels, drills.

``book`` is the pure state machine (time passed in, no threads, no I/O);
``service`` binds it to the agent (commands, the state file, the retained
``maintenance`` and ``check/drill`` topics).
"""

from .book import AlarmBook, AlarmError, DrillReport, Event, Handled, HandledAlert, MaintenanceList, Policy, Scheduled

__all__ = ["AlarmBook", "AlarmError", "DrillReport", "Event", "Handled", "HandledAlert", "MaintenanceList",
           "Policy", "Scheduled"]
