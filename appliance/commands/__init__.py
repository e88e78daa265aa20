"""Requests from the MDM: parsed (requests.py), authorised and rate-limited (policy.py), journalled in
the store, executed on the buses (jobs.py) by the dispatcher (dispatcher.py), answered (replies.py)."""
