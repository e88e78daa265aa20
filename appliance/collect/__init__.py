"""Collection: reading meters on the RS-485 buses and writing what they say into the store."""
