"""Our JSON definitions of Kafka's share-group messages, read by :mod:`..protocol`."""
