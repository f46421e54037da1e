"""Share groups (KIP-932): Kafka's own work queues, where any number of consumers read the same partitions
and acknowledge each record.

:mod:`.protocol` defines the messages kafka-python lacks; :mod:`.consumer` is the broker's consumer in
share mode (``KafkaBroker(group_type="share")``).
"""
