"""DLMS/COSEM client, sans-I/O: HDLC, TCP wrapper, A-XDR, xDLMS APDUs and security suite 0."""
