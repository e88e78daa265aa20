"""The uplink: CIM messages to the MDM over MQTT, and commands back."""
