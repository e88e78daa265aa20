"""HES Appliance: a head-end system for smart-meter networks in one box."""

__version__ = "0.1.0"
