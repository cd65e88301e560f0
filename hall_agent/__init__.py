"""hall-agent: the Raspberry Pi agent of a customer-service hall.

It reads the hall's sensors, watches doors, panic buttons and the ticket
printer, runs the opening and closing checks and publishes everything over
MQTT.  The product contract is SPEC.md; the layout is:

- ``config``    settings (TOML + environment), validated before anything starts
- ``envelope``  the event envelope (pure)
- ``outbox``    the durable SQLite outbox every envelope passes through
- ``link``      the MQTT connection (paho-mqtt)
- ``commands``  the ``cmd`` topic's dispatcher (pure parsing and replies)
- ``agent``     the composition root that wires it all together
- ``cli``       the ``hall-agent`` command line
"""

__version__ = "0.1.0"
