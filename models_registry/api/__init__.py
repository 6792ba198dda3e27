"""The management API for the model catalog."""
