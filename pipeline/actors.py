"""Placeholder: the pipeline helper replaces this file with the actors."""
