"""Dramatiq brokers written for this project. ``kafka`` is the only module that imports kafka-python."""
