"""A simulated substation: meters behind real ptys, a private Mosquitto, an MDM listener.

Used by `hes demo` and by the tests. Each simulated device sits exactly where a real one would:
behind a serial device node or a TCP port, never inside the daemon's process.
"""
